//! A health probe client for container images that carry no `curl`: `ci-service --probe URL`
//! (and cd-service's) GETs a plain-HTTP URL and exits 0 only on a 2xx answer.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

/// When the process was started as `<binary> --probe URL` (a container health check), probes
/// and exits: 0 when healthy, 1 with the reason on stderr otherwise. Returns otherwise.
pub fn run_if_asked() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, url] = args.as_slice() {
        if flag == "--probe" {
            match probe(url) {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    eprintln!("probe failed: {e}");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// GETs `url` (`http://host:port/path`) with a 3 s limit; Ok on a 2xx status.
pub fn probe(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".to_string()));
    let limit = Duration::from_secs(3);
    let addr =
        authority.to_socket_addrs().map_err(|e| format!("{authority}: {e}"))?.next().ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(limit)).and_then(|_| stream.set_write_timeout(Some(limit))).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{url} answered {:?}", line.lines().next().unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, net::TcpListener};

    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/readyz", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the whole request before answering, as a server does.
            let mut request = Vec::new();
            let mut buf = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
        });
        url
    }

    #[test]
    fn a_2xx_passes_and_anything_else_fails() {
        assert!(super::probe(&serve_once("HTTP/1.1 200 OK\r\n\r\nok")).is_ok());
        let err = super::probe(&serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n")).unwrap_err();
        assert!(err.contains("503"), "{err}");
        assert!(super::probe("http://127.0.0.1:1/healthz").is_err());
        assert!(super::probe("https://x/").unwrap_err().contains("only http://"));
    }
}
