# A small, non-root image of the portcullis binary.
#   docker build -t portcullis .
#   docker run -p 5000:5000 -v portcullis-data:/var/lib/portcullis portcullis
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ too: Cargo.toml names the bench target, and cargo refuses a
# manifest whose targets are missing.
COPY benches ./benches
COPY src ./src
RUN cargo build --release --locked && strip target/release/portcullis && mkdir -p /out/data

# distroless/cc: glibc, CA certificates, no shell; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY --chown=65532:65532 policies /etc/portcullis/policies
COPY --chown=65532:65532 certs /etc/portcullis/certs
COPY --from=build --chown=65532:65532 /out/data /var/lib/portcullis
WORKDIR /var/lib/portcullis
USER 65532:65532
EXPOSE 5000
VOLUME ["/var/lib/portcullis"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data-dir", "/var/lib/portcullis", "--policies", "/etc/portcullis/policies", "--log-format", "json"]
