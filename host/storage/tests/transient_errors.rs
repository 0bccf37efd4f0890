//! A store that fails a request now and then must not fail a run: every
//! request wasmpipe makes is retried on a transient error. Here a fake S3
//! endpoint answers the way Garage did in CI under load: a single-key
//! `DELETE` gets 503 once, and a bulk `DeleteObjects` gets 200 with a
//! per-key "database is locked" error, which object_store never retries.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use object_store::ObjectStoreExt;
use wasmpipe_storage::{Storage, StoreOptions};

/// Serve S3 requests on loopback; return the endpoint and the log of
/// `METHOD path` lines it received.
fn flaky_s3() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut words = request.split_whitespace();
            let line = format!("{} {}", words.next().unwrap_or(""), words.next().unwrap_or(""));
            let deletes_before = log.lock().unwrap().iter().filter(|l: &&String| l.starts_with("DELETE")).count();
            log.lock().unwrap().push(line.clone());
            let (status, body) = if line.starts_with("POST") {
                (
                    "200 OK",
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult><Error><Key>out/x</Key>\
                     <Code>ServiceUnavailable</Code><Message>database is locked</Message></Error></DeleteResult>",
                )
            } else if line.starts_with("DELETE") && deletes_before == 0 {
                (
                    "503 Service Unavailable",
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code>\
                     <Message>database is locked</Message></Error>",
                )
            } else {
                ("204 No Content", "")
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/xml\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (endpoint, seen)
}

#[tokio::test]
async fn a_delete_the_store_fails_once_is_retried() {
    let (endpoint, seen) = flaky_s3();
    let mut options = StoreOptions::new();
    options.insert(
        "s3".into(),
        [
            ("endpoint", endpoint.as_str()),
            ("allow_http", "true"),
            ("access_key_id", "test"),
            ("secret_access_key", "test"),
            ("region", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let storage = Storage::new(".").with_options(options);
    let at = storage.resolve("s3://bucket/out/x").unwrap();
    at.store().delete(at.path()).await.unwrap_or_else(|e| panic!("delete failed: {e}\nrequests: {seen:?}"));
    assert_eq!(*seen.lock().unwrap(), ["DELETE /bucket/out/x", "DELETE /bucket/out/x"]);
}
