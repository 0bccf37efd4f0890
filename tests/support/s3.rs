//! Real S3-compatible servers on loopback for the integration tests, and an
//! HTTP proxy that injects faults between a client and one of them.
//!
//! - [`garage()`]: a single-node [Garage](https://garagehq.deuxfleurs.fr)
//!   2.5.0, which ignores `If-None-Match` on `PutObject` (no conditional
//!   writes);
//! - [`moto()`]: moto's S3 server, which honours conditional writes;
//! - [`fault_proxy()`]: answers some requests `503 SlowDown` and delays
//!   others, deterministically from a seed.
//!
//! Each server starts once per test process, in a fresh directory under the
//! system temp dir, and is killed with the process (`PR_SET_PDEATHSIG`).
//! Directories left by earlier, dead test processes are swept at startup.
//! `scripts/install-test-deps.sh` installs both servers.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};

/// How long a server may take to come up before the harness gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Prefix of the per-process server directories under the temp dir.
const DIR_PREFIX: &str = "wasmpipe-s3-";

/// A running S3-compatible server and the credentials of its test bucket.
#[derive(Debug)]
pub struct S3Server {
    /// Which server this is: `"garage"` or `"moto"`.
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`, path-style.
    pub endpoint: String,
    /// The region requests must be signed for.
    pub region: String,
    /// Access key id with read, write and owner rights on [`Self::bucket`].
    pub access_key: String,
    /// Secret of [`Self::access_key`].
    pub secret_key: String,
    /// The test bucket, shared by every test of the process: use
    /// [`unique_prefix`] to keep tests apart.
    pub bucket: String,
    /// The server's working directory (config, data, log).
    pub dir: PathBuf,
    /// The server's combined stdout and stderr.
    pub log: PathBuf,
    child: Mutex<Child>,
}

/// The Garage server of this test process, started on first use.
///
/// The binary is `$WASMPIPE_GARAGE`, else
/// `$HOME/.cache/wasmpipe/garage-2.5.0/bin/garage`, else `garage` on `PATH`.
pub fn garage() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(start_garage)
}

/// The moto S3 server of this test process (from `.tools/venv`), started on
/// first use.
pub fn moto() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(start_moto)
}

/// A key prefix no other test (in this or any other process) uses:
/// `<tag>-<pid>-<nanos>-<n>`.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{tag}-{}-{nanos}-{n}", std::process::id())
}

impl S3Server {
    /// The standard AWS variables a client of this server would read.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_DEFAULT_REGION", self.region.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Options for `wasmpipe_storage::Storage::with_options` that reach
    /// this server (credentials included, which a manifest may not hold),
    /// at `endpoint` (this server's, or a proxy's in front of it).
    pub fn options_at(&self, endpoint: &str) -> wasmpipe_storage::StoreOptions {
        let s3 = [
            ("endpoint", endpoint),
            ("region", self.region.as_str()),
            ("access_key_id", self.access_key.as_str()),
            ("secret_access_key", self.secret_key.as_str()),
            ("allow_http", "true"),
            ("virtual_hosted_style_request", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        [("s3".to_string(), s3)].into_iter().collect()
    }

    /// [`Self::options_at`] this server's own endpoint.
    pub fn options(&self) -> wasmpipe_storage::StoreOptions {
        self.options_at(&self.endpoint)
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// A client builder for this server's bucket, with conditional put
    /// (`If-None-Match: *`) enabled: on Garage it is silently ignored.
    /// Point it elsewhere (a [`FaultProxy`]) with `with_endpoint`.
    pub fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_bucket_name(&self.bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
    }

    /// An object store client for this server's bucket ([`Self::builder`]).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(self.builder().build().unwrap_or_else(|e| panic!("building an S3 client for {}: {e}", self.endpoint)))
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Whether the server process is still running.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(child.try_wait(), Ok(None))
    }
}

// ---------------------------------------------------------------------------
// Starting servers

/// Kills the child unless defused, so a failed startup leaves nothing behind.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until defused")
    }

    fn defuse(mut self) -> Child {
        self.0.take().expect("child present until defused")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_garage() -> S3Server {
    let bin = garage_binary();
    let started = Instant::now();
    let dir = server_dir("garage");
    let log = dir.join("server.log");
    let config = dir.join("garage.toml");
    let [rpc_port, s3_port] = free_ports();
    let secret = random_hex(32);
    let toml = format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
    );
    std::fs::write(&config, toml).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));

    let mut cmd = Command::new(&bin);
    cmd.arg("-c").arg(&config).arg("server").env("RUST_LOG", "garage=info").current_dir(&dir);
    let mut child = KillOnDrop(Some(spawn_tied(cmd, &log).unwrap_or_else(|e| {
        panic!("starting {}: {e}\nreinstall Garage with scripts/install-test-deps.sh", bin.display())
    })));

    // CLI calls run on the calling thread, which waits for them: tied to it.
    let command = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(&config).args(args);
        tie_to_process(&mut cmd);
        cmd
    };
    let cli = |args: &[&str], child: &mut Child| -> String {
        let out =
            command(args).output().unwrap_or_else(|e| panic!("running {} {}: {e}", bin.display(), args.join(" ")));
        if !out.status.success() {
            panic!(
                "`garage {}` failed ({}):\n{}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                server_state(child, &log),
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // The CLI talks to the daemon over RPC: `status` answers once it is up.
    wait_until("garage status", child.child(), &log, || {
        command(&["status"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    });
    let node = cli(&["node", "id", "-q"], child.child());
    let node = node.trim().split('@').next().unwrap_or_default().to_string();
    assert!(!node.is_empty(), "`garage node id -q` printed no node id\n{}", server_state(child.child(), &log));
    cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node], child.child());
    cli(&["layout", "apply", "--version", "1"], child.child());
    let bucket = "wasmpipe-test";
    cli(&["bucket", "create", bucket], child.child());
    let key = cli(&["key", "create", "wasmpipe-test"], child.child());
    // Garage 2 prints the secret only here, as `Secret key:   <hex>`.
    let field = |name: &str| {
        key.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("`garage key create` printed no `{name}` line:\n{key}"))
    };
    let (access_key, secret_key) = (field("Key ID:"), field("Secret key:"));
    cli(&["bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "wasmpipe-test"], child.child());

    let endpoint = format!("http://127.0.0.1:{s3_port}");
    wait_until("Garage's S3 API", child.child(), &log, || http_answers(&endpoint));
    eprintln!("s3 harness: garage up at {endpoint} in {:.2}s ({})", started.elapsed().as_secs_f64(), dir.display());
    S3Server {
        name: "garage",
        endpoint,
        region: "garage".into(),
        access_key,
        secret_key,
        bucket: bucket.into(),
        dir,
        log,
        child: Mutex::new(child.defuse()),
    }
}

fn start_moto() -> S3Server {
    let bin = crate::repo().join(".tools/venv/bin/moto_server");
    assert!(bin.is_file(), "{} is missing: moto is not installed, run scripts/install-test-deps.sh", bin.display());
    let started = Instant::now();
    let dir = server_dir("moto");
    let log = dir.join("server.log");
    let [port] = free_ports();
    let mut cmd = Command::new(&bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).current_dir(&dir);
    let mut child = KillOnDrop(Some(spawn_tied(cmd, &log).unwrap_or_else(|e| {
        panic!("starting {}: {e}\nreinstall moto with scripts/install-test-deps.sh", bin.display())
    })));
    let endpoint = format!("http://127.0.0.1:{port}");
    wait_until("moto's S3 API", child.child(), &log, || http_answers(&endpoint));

    // moto accepts any credentials, and an unsigned bucket creation.
    let bucket = "wasmpipe-test";
    let created = http_request(&endpoint, &format!("PUT /{bucket} HTTP/1.1\r\nContent-Length: 0\r\n"));
    match created {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") => {}
        other => panic!("creating bucket {bucket} on moto: {other:?}\n{}", server_state(child.child(), &log)),
    }
    eprintln!("s3 harness: moto up at {endpoint} in {:.2}s ({})", started.elapsed().as_secs_f64(), dir.display());
    S3Server {
        name: "moto",
        endpoint,
        region: "us-east-1".into(),
        access_key: "wasmpipe-test".into(),
        secret_key: "wasmpipe-test-secret".into(),
        bucket: bucket.into(),
        dir,
        log,
        child: Mutex::new(child.defuse()),
    }
}

fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMPIPE_GARAGE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "WASMPIPE_GARAGE={} is not a file: unset it or run scripts/install-test-deps.sh",
            p.display()
        );
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = Path::new(&home).join(".cache/wasmpipe/garage-2.5.0/bin/garage");
        if cached.is_file() {
            return cached;
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("Garage is not installed: run scripts/install-test-deps.sh"))
}

/// Have the kernel SIGKILL `cmd`'s process when the thread that spawns it
/// exits (so, at the latest, with the test process).
fn tie_to_process(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody will kill us.
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process exited while starting a server"));
            }
            Ok(())
        })
    };
}

/// Spawn `cmd` with stdout and stderr appended to `log`, tied to this
/// process: the kernel SIGKILLs it when the process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// and every test runs on a thread of its own, so the fork happens on one
/// spawner thread that lives as long as the process.
fn spawn_tied(mut cmd: Command, log: &Path) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    tie_to_process(&mut cmd);

    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("s3-server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the server spawner thread");
        tx
    });
    let (reply, result) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| io::Error::other("the server spawner thread is gone"))?;
    result.recv().map_err(|_| io::Error::other("the server spawner thread is gone"))?
}

/// Poll `ready` every 100 ms until it holds; panic (with the log's tail) if
/// the server exits or [`STARTUP_TIMEOUT`] passes first.
fn wait_until(what: &str, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited ({status}) while waiting for {what}\n{}", server_state(child, log));
        }
        if Instant::now() > deadline {
            panic!("{what} did not answer within {STARTUP_TIMEOUT:?}\n{}", server_state(child, log));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn server_state(child: &mut Child, log: &Path) -> String {
    let state = match child.try_wait() {
        Ok(Some(status)) => format!("server exited: {status}"),
        Ok(None) => "server still running".to_string(),
        Err(e) => format!("server state unknown: {e}"),
    };
    format!("{state}; last lines of {}:\n{}", log.display(), log_tail(log))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A fresh `<temp>/wasmpipe-s3-<name>-<pid>-<nanos>`, after removing those
/// of processes that no longer run.
fn server_dir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else { continue };
            let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !Path::new("/proc").join(pid.to_string()).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = tmp.join(format!("{DIR_PREFIX}{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// `N` distinct free loopback ports (all bound at once, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a loopback port: {e}")))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound listener has an address").port())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    buf.iter().fold(String::with_capacity(bytes * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether an HTTP server answers (any status) at `endpoint`.
fn http_answers(endpoint: &str) -> bool {
    http_request(endpoint, "GET / HTTP/1.1\r\n").is_ok_and(|r| r.starts_with("HTTP/1."))
}

/// Send `head` (request line and headers, each ending in CRLF; `Host` and
/// `Connection: close` are added) to `endpoint`; return the whole response.
fn http_request(endpoint: &str, head: &str) -> io::Result<String> {
    let addr = host_port(endpoint);
    let mut stream = TcpStream::connect(&addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "{head}Host: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// `host:port` of an `http://host:port[/]` endpoint.
fn host_port(endpoint: &str) -> String {
    let rest = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{endpoint:?} is not an http:// endpoint (the harness speaks plain HTTP only)"));
    rest.trim_end_matches('/').to_string()
}

// ---------------------------------------------------------------------------
// Fault-injecting proxy

/// An HTTP/1.1 proxy in front of an S3 server that answers some requests
/// `503 SlowDown` and delays others. One request per connection; the
/// `Host` header is forwarded unchanged, so signatures made for the proxy's
/// address still verify upstream. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: point clients here.
    pub endpoint: String,
    shared: Arc<ProxyShared>,
    addr: SocketAddr,
}

#[derive(Debug)]
struct ProxyShared {
    upstream: SocketAddr,
    fail_one_in: u32,
    delay_one_in: u32,
    delay: Duration,
    seed: u64,
    requests: AtomicU64,
    failed: AtomicU64,
    delayed: AtomicU64,
    stop: AtomicBool,
}

/// How long the proxy waits on a silent client or upstream.
const PROXY_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest request or response head the proxy accepts.
const MAX_HEAD: usize = 64 * 1024;

/// Start a proxy to `upstream` (`http://127.0.0.1:PORT`) on its own threads.
///
/// Request `n` (in arrival order) fails with probability `1/fail_one_in`
/// and is otherwise delayed by `delay` with probability `1/delay_one_in`
/// (0 disables either), decided by a hash of `seed` and `n`: the same seed
/// gives the same sequence of faults.
pub fn fault_proxy(upstream: &str, fail_one_in: u32, delay_one_in: u32, delay: Duration, seed: u64) -> FaultProxy {
    let upstream_addr = host_port(upstream)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("fault proxy: cannot resolve upstream {upstream:?}"));
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("fault proxy: binding a loopback port: {e}"));
    let addr = listener.local_addr().expect("bound listener has an address");
    let shared = Arc::new(ProxyShared {
        upstream: upstream_addr,
        fail_one_in,
        delay_one_in,
        delay,
        seed,
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        delayed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let accept_shared = shared.clone();
    thread::Builder::new()
        .name(format!("fault-proxy-{}", addr.port()))
        .spawn(move || {
            for conn in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = accept_shared.clone();
                let _ = thread::Builder::new().name("fault-proxy-conn".into()).spawn(move || {
                    // A broken client or upstream just ends its connection.
                    let _ = proxy_one(&shared, conn);
                });
            }
        })
        .expect("start the fault proxy thread");
    FaultProxy { endpoint: format!("http://{addr}"), shared, addr }
}

impl FaultProxy {
    /// Requests received (complete heads), including failed ones.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests answered `503 SlowDown`.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Requests delayed before being forwarded.
    pub fn delayed(&self) -> u64 {
        self.shared.delayed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// splitmix64: a well-mixed 64-bit hash of `x`.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Read until the end of an HTTP head (`\r\n\r\n`); return everything read
/// and the head's length, or `None` on EOF before any byte.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside an HTTP head"))
            };
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some((buf, from + i + 4)));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head over 64 KiB"));
        }
    }
}

/// The head's lines, without `Connection`, `Keep-Alive` and
/// `Proxy-Connection`, plus `Connection: close`, re-joined.
fn close_head(head: &str) -> String {
    let mut out = String::with_capacity(head.len() + 20);
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// The value of header `name` (case-insensitive) in `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn respond(client: &mut TcpStream, status: &str, code: &str, message: &str) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>wasmpipe-fault-proxy</RequestId></Error>"
    );
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    client.flush()?;
    client.shutdown(Shutdown::Write)
}

/// Serve the one request of `client`.
fn proxy_one(shared: &ProxyShared, mut client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(PROXY_IO_TIMEOUT))?;
    client.set_write_timeout(Some(PROXY_IO_TIMEOUT))?;
    let Some((buf, head_len)) = read_head(&mut client)? else { return Ok(()) };
    if shared.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(head) = std::str::from_utf8(&buf[..head_len]) else {
        return respond(&mut client, "400 Bad Request", "InvalidRequest", "request head is not UTF-8");
    };
    if header(head, "transfer-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity")) {
        return respond(
            &mut client,
            "501 Not Implemented",
            "NotImplemented",
            "the wasmpipe fault proxy handles Content-Length bodies only, not Transfer-Encoding",
        );
    }
    let Ok(length) = header(head, "content-length").unwrap_or("0").parse::<usize>() else {
        return respond(&mut client, "400 Bad Request", "InvalidRequest", "bad Content-Length");
    };
    let mut body = buf[head_len..].to_vec();
    if body.len() < length {
        let already = body.len();
        body.resize(length, 0);
        client.read_exact(&mut body[already..])?;
    }
    body.truncate(length);

    let roll = splitmix64(shared.seed ^ splitmix64(n));
    if shared.fail_one_in > 0 && roll.is_multiple_of(u64::from(shared.fail_one_in)) {
        shared.failed.fetch_add(1, Ordering::SeqCst);
        return respond(&mut client, "503 Slow Down", "SlowDown", "Please reduce your request rate.");
    }
    if shared.delay_one_in > 0 && (roll >> 32).is_multiple_of(u64::from(shared.delay_one_in)) {
        shared.delayed.fetch_add(1, Ordering::SeqCst);
        thread::sleep(shared.delay);
    }

    let mut upstream = match TcpStream::connect_timeout(&shared.upstream, PROXY_IO_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("fault proxy: upstream {} unreachable: {e}", shared.upstream);
            return respond(&mut client, "502 Bad Gateway", "BadGateway", &message);
        }
    };
    upstream.set_read_timeout(Some(PROXY_IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(PROXY_IO_TIMEOUT))?;
    upstream.write_all(close_head(head).as_bytes())?;
    upstream.write_all(&body)?;
    upstream.flush()?;

    // Relay the response, its head rewritten so the client does not keep
    // the connection, then everything until upstream closes.
    let Some((resp, resp_head_len)) = read_head(&mut upstream)? else {
        return respond(&mut client, "502 Bad Gateway", "BadGateway", "upstream closed without answering");
    };
    let resp_head = String::from_utf8_lossy(&resp[..resp_head_len]);
    client.write_all(close_head(&resp_head).as_bytes())?;
    client.write_all(&resp[resp_head_len..])?;
    io::copy(&mut upstream, &mut client)?;
    client.flush()?;
    client.shutdown(Shutdown::Write)
}
