//! `rediss://` URLs (feature `redis-tls`): a client and a worker host
//! talk to a `redis-server` that accepts TLS only on its TLS port, with an
//! ACL user. The certificate is self-signed (made with the `openssl`
//! command), so the URL says `#insecure` (no certificate check); a
//! production URL leaves it out and gets the system's roots.
#![cfg(feature = "redis-tls")]

mod common;

use common::server::{HostOpts, HostProc, Redis};
use forkpool::broker::Broker;
use std::net::TcpListener;
use std::process::Command;

fn add(x: (u64, u64)) -> u64 {
    x.0 + x.1
}
forkpool::register!(add);

#[test]
fn host_main() {
    common::server::host_main();
}

#[test]
fn a_rediss_url_with_a_user_works() {
    let certs = std::env::temp_dir().join(format!("forkpool-tls-{}", std::process::id()));
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    common::server::ensure_installed("openssl", "openssl");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command (Debian: apt-get install openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        cert.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
        "--user",
        "app",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("rediss://app:s3cret@127.0.0.1:{tls_port}/#insecure");
    // The TLS port speaks TLS only.
    let plain = format!("redis://app:s3cret@127.0.0.1:{tls_port}/");
    let plain = Broker::new(&plain)
        .unwrap()
        .timeout(std::time::Duration::from_secs(1))
        .client();
    assert!(plain.is_err());
    let mut o = HostOpts::new(&url);
    o.workers = 1;
    let host = HostProc::spawn(&o);
    let client = Broker::new(&url).unwrap().client().unwrap();
    assert_eq!(client.apply(add, (20, 22)), Ok(42), "{}", host.log());
    drop(redis);
    let _ = std::fs::remove_dir_all(&certs);
}
