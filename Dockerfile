# A small, non-root image of the portcullis binary.
#   docker build -t portcullis .
#   docker run -p 5000:5000 -p 5001:5001 -v portcullis-data:/var/lib/portcullis portcullis
# It fails closed: content that no enforcing rule admits is refused. For a
# rollout, audit instead (served and logged as would-deny):
#   docker run -e PORTCULLIS_POLICIES=/etc/portcullis/policies-audit ...
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
# Two policy directories: the enforcing one is the default; the repository's
# own (whose catch-all audits) is the rollout switch.
COPY --chown=65532:65532 policies/00-publishers.yaml /etc/portcullis/policies/00-publishers.yaml
COPY --chown=65532:65532 deploy/image/99-catch-all.yaml /etc/portcullis/policies/99-catch-all.yaml
COPY --chown=65532:65532 policies /etc/portcullis/policies-audit
COPY --chown=65532:65532 certs /etc/portcullis/certs
COPY --from=build --chown=65532:65532 /out/data /var/lib/portcullis
WORKDIR /var/lib/portcullis
USER 65532:65532
ENV PORTCULLIS_POLICIES=/etc/portcullis/policies
# 5000: the registry API; 5001: the admin listener (metrics, /healthz, /readyz).
EXPOSE 5000 5001
VOLUME ["/var/lib/portcullis"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--admin-listen", "0.0.0.0:5001", "--data-dir", "/var/lib/portcullis", "--log-format", "json"]
