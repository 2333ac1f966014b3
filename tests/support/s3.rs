//! A real S3 server on a loopback port: `s3s-fs` (the s3s project's
//! filesystem-backed S3 implementation, 0.14 line) served in-process with
//! hyper on its own thread and runtime, so sync tests, async tests and
//! child processes (the built binary) can all talk to it. Requests are
//! signed with fixed test keys (s3s refuses signed requests without them).
//!
//! Its conditional writes are checked, but not atomically (exists, then
//! rename): race tests use `object_store::memory::InMemory` as well.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};

pub const ACCESS_KEY: &str = "portcullis-test";
pub const SECRET_KEY: &str = "portcullis-test-secret";
pub const REGION: &str = "us-east-1";

/// A running server, stopped when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:port`
    pub endpoint: String,
    /// The server's data: one directory per bucket.
    pub root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Start serving, with `buckets` created.
    pub fn start(buckets: &[&str]) -> S3Server {
        let root = tempfile::tempdir().expect("s3 root");
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).expect("bucket");
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let http = Arc::new(http);
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => return,
                    };
                    let (http, service) = (http.clone(), service.clone());
                    tokio::spawn(async move {
                        let _ = http.serve_connection(TokioIo::new(socket), service).await;
                    });
                }
            });
        });
        S3Server {
            endpoint,
            root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// An `object_store` client for `bucket` on this server.
    pub fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(REGION)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("s3 client")
    }

    /// The environment the built binary needs to reach this server (the
    /// standard AWS variables: credentials never go in the YAML).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
        ]
    }

    /// `storage:` YAML for `bucket` under `prefix` on this server.
    pub fn storage_yaml(&self, bucket: &str, prefix: &str, max_bytes: Option<u64>) -> String {
        let cap = max_bytes.map(|b| format!("  maxBytes: {b}\n")).unwrap_or_default();
        format!(
            "storage:\n{cap}  s3:\n    bucket: {bucket}\n    endpoint: {}\n    region: {REGION}\n    prefix: {prefix}\n    allowHttp: true\n",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
