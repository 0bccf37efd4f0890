//! The S3 test harness against real servers: Garage and moto come up and
//! behave like S3 through `object_store`, they differ on conditional writes
//! the way the production code must detect, and the fault proxy injects
//! failures that a retrying client rides out.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Error, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use wasmpipe_tests::s3::{S3Server, fault_proxy, garage, moto, unique_prefix};

/// Deterministic bytes, different for each `seed`.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// put, head, get, ranged get, list, multipart upload, delete.
async fn round_trip(server: &S3Server) {
    let store = server.store();
    let prefix = unique_prefix("round-trip");
    let ctx = format!("{} at {}", server.name, server.endpoint);
    let small = Path::from(format!("{prefix}/a/small.bin"));
    let other = Path::from(format!("{prefix}/b/other.bin"));
    let big = Path::from(format!("{prefix}/big.bin"));
    let small_data = data(100_000, 1);

    store.put(&small, small_data.clone().into()).await.unwrap_or_else(|e| panic!("put on {ctx}: {e}"));
    store.put(&other, PutPayload::from_static(b"other")).await.unwrap_or_else(|e| panic!("put on {ctx}: {e}"));

    let meta = store.head(&small).await.unwrap_or_else(|e| panic!("head on {ctx}: {e}"));
    assert_eq!(meta.size, small_data.len() as u64, "{ctx}: head size");
    assert_eq!(meta.location, small);
    let got = store.get(&small).await.unwrap_or_else(|e| panic!("get on {ctx}: {e}"));
    let got = got.bytes().await.unwrap_or_else(|e| panic!("get body on {ctx}: {e}"));
    assert!(got[..] == small_data[..], "{ctx}: get returned other bytes than were put");
    let range = store.get_range(&small, 1000..1234).await.unwrap_or_else(|e| panic!("get_range on {ctx}: {e}"));
    assert_eq!(&range[..], &small_data[1000..1234], "{ctx}: ranged get");

    // Multipart: two 5 MiB parts (S3's minimum for all but the last) and a
    // smaller last one, 11.5 MiB in all.
    let big_data = data(23 << 19, 2);
    let mut upload = store.put_multipart(&big).await.unwrap_or_else(|e| panic!("put_multipart on {ctx}: {e}"));
    for part in [&big_data[..5 << 20], &big_data[5 << 20..10 << 20], &big_data[10 << 20..]] {
        upload.put_part(part.to_vec().into()).await.unwrap_or_else(|e| panic!("upload part on {ctx}: {e}"));
    }
    let done = upload.complete().await.unwrap_or_else(|e| panic!("complete multipart on {ctx}: {e}"));
    // A multipart ETag is `"<md5 of part md5s>-<part count>"`: proof the
    // server really assembled three parts.
    let etag = done.e_tag.unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "{ctx}: multipart ETag {etag:?} does not count 3 parts");
    let got = store.get(&big).await.unwrap_or_else(|e| panic!("get on {ctx}: {e}"));
    let got = got.bytes().await.unwrap_or_else(|e| panic!("get body on {ctx}: {e}"));
    assert_eq!(got.len(), big_data.len(), "{ctx}: multipart object size");
    assert!(got[..] == big_data[..], "{ctx}: multipart object differs from what was uploaded");
    let tail_range = (big_data.len() - 100) as u64..big_data.len() as u64;
    let tail = store.get_range(&big, tail_range).await.unwrap_or_else(|e| panic!("get_range on {ctx}: {e}"));
    assert_eq!(&tail[..], &big_data[big_data.len() - 100..], "{ctx}: ranged get across the last part");

    let mut listed: Vec<(String, u64)> = store
        .list(Some(&Path::from(prefix.as_str())))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list on {ctx}: {e}"));
    listed.sort();
    let mut expected = vec![
        (small.to_string(), small_data.len() as u64),
        (other.to_string(), 5),
        (big.to_string(), big_data.len() as u64),
    ];
    expected.sort();
    assert_eq!(listed, expected, "{ctx}: list");
    let dirs = store
        .list_with_delimiter(Some(&Path::from(prefix.as_str())))
        .await
        .unwrap_or_else(|e| panic!("list_with_delimiter on {ctx}: {e}"));
    let common: Vec<String> = dirs.common_prefixes.iter().map(|p| p.to_string()).collect();
    assert_eq!(common, [format!("{prefix}/a"), format!("{prefix}/b")], "{ctx}: common prefixes");
    assert_eq!(dirs.objects.len(), 1, "{ctx}: objects directly under the prefix");

    for path in [&small, &other, &big] {
        store.delete(path).await.unwrap_or_else(|e| panic!("delete on {ctx}: {e}"));
    }
    match store.head(&small).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{ctx}: head after delete returned {other:?}, not NotFound"),
    }
    let left: Vec<_> = store.list(Some(&Path::from(prefix.as_str()))).collect().await;
    assert!(left.is_empty(), "{ctx}: objects left after deleting all: {left:?}");
}

#[tokio::test]
async fn garage_round_trip() {
    round_trip(garage()).await;
}

#[tokio::test]
async fn moto_round_trip() {
    round_trip(moto()).await;
}

/// Write `key` twice, the second time with `PutMode::Create`.
async fn create_twice(server: &S3Server) -> Result<(), Error> {
    let store = server.store();
    let key = Path::from(format!("{}/marker", unique_prefix("conditional")));
    store
        .put_opts(&key, PutPayload::from_static(b"first"), PutMode::Create.into())
        .await
        .unwrap_or_else(|e| panic!("{}: first create of a new key failed: {e}", server.name));
    let second =
        store.put_opts(&key, PutPayload::from_static(b"second"), PutOptions::from(PutMode::Create)).await.map(drop);
    let now = store.get(&key).await.expect("get the key").bytes().await.expect("body");
    match &second {
        Ok(()) => assert_eq!(&now[..], b"second", "{}: create claimed success but did not write", server.name),
        Err(_) => assert_eq!(&now[..], b"first", "{}: refused create still overwrote", server.name),
    }
    second
}

#[tokio::test]
async fn moto_refuses_create_over_existing_key() {
    match create_twice(moto()).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("moto: PutMode::Create on an existing key returned {other:?}, not AlreadyExists"),
    }
}

#[tokio::test]
async fn garage_ignores_if_none_match() {
    // Garage does not implement conditional writes: it ignores
    // `If-None-Match: *` and overwrites. The production code has to detect
    // this at runtime instead of trusting PutMode::Create; if this starts
    // failing, a newer Garage honours the header.
    let result = create_twice(garage()).await;
    assert!(result.is_ok(), "garage refused PutMode::Create on an existing key ({result:?}): it honours it now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_ride_out_injected_faults() {
    let server = garage();
    let proxy = fault_proxy(&server.endpoint, 10, 10, Duration::from_millis(50), 0x5EED);
    // object_store's default RetryConfig: 10 retries, backoff from 100 ms.
    let store = server.builder().with_endpoint(&proxy.endpoint).build().expect("client for the proxy");
    let prefix = unique_prefix("faults");
    let key = |i: u64| Path::from(format!("{prefix}/{i:03}"));

    futures::stream::iter(0..50u64)
        .map(|i| {
            let store = &store;
            async move {
                let payload = data(1000 + i as usize * 37, 100 + i);
                store.put(&key(i), payload.into()).await.unwrap_or_else(|e| panic!("put {i} through the proxy: {e}"))
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    futures::stream::iter(0..50u64)
        .map(|i| {
            let store = &store;
            async move {
                let got = store.get(&key(i)).await.unwrap_or_else(|e| panic!("get {i} through the proxy: {e}"));
                let got = got.bytes().await.unwrap_or_else(|e| panic!("get {i} body through the proxy: {e}"));
                assert!(got[..] == data(1000 + i as usize * 37, 100 + i)[..], "object {i} came back different");
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;

    let (requests, failed, delayed) = (proxy.requests(), proxy.failed(), proxy.delayed());
    eprintln!("fault proxy: {requests} requests, {failed} failed, {delayed} delayed");
    assert!(failed > 0, "the proxy injected no failure in {requests} requests");
    assert!(delayed > 0, "the proxy delayed no request in {requests} requests");
    assert_eq!(requests, 100 + failed, "every failure should cost exactly one retry, and nothing else be retried");

    // Directly, without the proxy, the objects are all there.
    let direct = server.store();
    let listed: Vec<_> = direct.list(Some(&Path::from(prefix.as_str()))).try_collect().await.expect("list");
    assert_eq!(listed.len(), 50, "objects written through the proxy");
}

#[test]
fn proxy_faults_are_deterministic() {
    use std::io::{Read, Write};
    // A trivial upstream that answers 200 to anything, to count outcomes.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in upstream.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let outcomes = |seed: u64| -> (Vec<bool>, u64, u64) {
        let proxy = fault_proxy(&format!("http://{upstream_addr}"), 4, 0, Duration::ZERO, seed);
        let addr = proxy.endpoint.trim_start_matches("http://").to_string();
        let ok: Vec<bool> = (0..40)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(&addr).expect("connect to proxy");
                write!(s, "GET / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").expect("send");
                let mut resp = String::new();
                s.read_to_string(&mut resp).expect("read");
                assert!(resp.contains("Connection: close"), "proxy response lacks Connection: close:\n{resp}");
                if resp.starts_with("HTTP/1.1 503") {
                    assert!(resp.contains("<Code>SlowDown</Code>"), "503 without an S3 SlowDown body:\n{resp}");
                    false
                } else {
                    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"), "not relayed:\n{resp}");
                    true
                }
            })
            .collect();
        (ok, proxy.requests(), proxy.failed())
    };
    let (a, requests, failed) = outcomes(7);
    assert_eq!(requests, 40);
    assert_eq!(failed, a.iter().filter(|ok| !**ok).count() as u64);
    assert!((3..=20).contains(&failed), "1 in 4 of 40 failed {failed} times");
    assert_eq!(outcomes(7).0, a, "the same seed gave other faults");
    assert_ne!(outcomes(8).0, a, "another seed gave the same faults");
}
