//! A TLS front door for a plain-HTTP server, as an ingress or a collector's TLS listener is in
//! production: rustls terminates TLS on a free port of 127.0.0.1 with a certificate for `127.0.0.1`
//! signed by a CA made by `openssl` for the test, and each connection is relayed byte for byte to the
//! server behind it. Tests give clients `ca_file()`; without it they must refuse the server.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, sync::Arc};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

use crate::run;

pub struct TlsProxy {
    /// Where TLS is served.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Serves TLS in front of `target` (a plain TCP server on loopback).
    pub async fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (cert, key) = (d.join("server.pem"), d.join("server.key"));
        let openssl = || {
            let mut c = std::process::Command::new("openssl");
            c.current_dir(d).stderr(Stdio::null());
            c
        };
        // A CA, and a server certificate it signs: webpki refuses a CA certificate as a server's.
        run(openssl()
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=conveyor test CA"])
            .args(["-keyout", "ca.key", "-out", "ca.pem"]));
        run(openssl().args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]));
        std::fs::write(d.join("server.ext"), "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .expect("write server.ext");
        run(openssl()
            .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"])
            .args(["-extfile", "server.ext", "-out", "server.pem"]));
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert).expect("read cert.pem").collect::<Result<_, _>>().expect("parse cert.pem");
        let key = PrivateKeyDer::from_pem_file(&key).expect("parse key.pem");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a valid certificate and key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the TLS port");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to relay.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut plain) = TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, dir, task }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the proxy's certificate, PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
