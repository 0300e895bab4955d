//! The status page as a user meets it: over real HTTP on 127.0.0.1 (each page,
//! its content type, the refusals, a request head that is too large, slow
//! clients), and a real headless Chromium that loads the page, shows the banner
//! first and takes a screenshot. The page under floods, slowloris and garbage,
//! and on the shared address, is in `status_page_lab.rs`; the property tests of
//! the HTML escaping and the metrics format, and that the pages served are the
//! renderers' text, are unit tests of `src/status_http.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tandem_node::{
    Alarm, AlarmKind, PeerStatus, ReplicationSide, ReplicationStatus, StatusServer, StatusSnapshot,
    serve_status,
};
use tandem_role::{DeploymentMode, Epoch, NodeId, NodeState, Role, SiteId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const STANDBY: &str = "Failover deployment. Standby server.";
const ACTIVE: &str = "Failover deployment. Active server.";

/// Node 2 of site 1, standby, with the seed's replication table and one alarm.
fn standby() -> StatusSnapshot {
    let mut state = NodeState::first_boot(NodeId::Two, SiteId::ONE);
    state.deployment = DeploymentMode::Failover;
    state.role = Role::Standby;
    state.epoch = Epoch::new(4);
    StatusSnapshot {
        state,
        hostname: "meetings2.example.com".into(),
        node_address: "192.0.2.12/24".into(),
        shared_address: "192.0.2.10/24".into(),
        holds_shared_address: false,
        peer: PeerStatus {
            datagrams: false,
            address: "192.0.2.11".into(),
            connected: true,
            claim_epoch: Some(4),
            clock_offset_ms: Some(0.25),
        },
        replication: Some(ReplicationStatus {
            local: ReplicationSide {
                replication_type: "Local".into(),
                site: 1,
                node: 2,
                state: "Active".into(),
                status: "Local".into(),
            },
            remote: ReplicationSide {
                replication_type: "Intra-site".into(),
                site: 1,
                node: 1,
                state: "Active".into(),
                status: "Connected".into(),
            },
            backlog: 0,
            lag_ms: Some(12),
            resync: None,
            local_detail: None,
            remote_detail: None,
        }),
        alarms: vec![Alarm::new(
            AlarmKind::PeerLost,
            "peer link was down for 12 s",
            1_714_564_800_000,
        )],
        alarm_history: Vec::new(),
        uptime_seconds: 3_725,
        taken_ms: 1_714_568_400_000,
        witness: None,
    }
}

/// A status server on 127.0.0.1 with a port of its own.
struct Server {
    addr: SocketAddr,
    status: watch::Sender<StatusSnapshot>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(snapshot: StatusSnapshot) -> Server {
        Server::start_with(snapshot, None).await
    }

    async fn start_with(snapshot: StatusSnapshot, head_timeout: Option<Duration>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (status, receiver) = watch::channel(snapshot);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = match head_timeout {
            None => tokio::spawn(serve_status(listener, receiver, shutdown)),
            Some(timeout) => tokio::spawn(
                StatusServer::new(receiver)
                    .with_head_timeout(timeout)
                    .serve(listener, shutdown),
            ),
        };
        Server {
            addr,
            status,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response as the client reads it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

fn parse_response(bytes: &[u8]) -> Response {
    let text = String::from_utf8_lossy(bytes);
    let end = text
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = text[..end].split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert!(
        matches!(parts.next(), Some("HTTP/1.1" | "HTTP/1.0")),
        "{status_line}"
    );
    let status = parts.next().unwrap().parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

/// Sends `request` as it is on a new connection and reads the reply until the
/// server closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    parse_response(&reply)
}

async fn get(addr: SocketAddr, path: &str) -> Response {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
    .await
}

/// What every reply carries.
fn assert_well_formed(response: &Response) {
    assert_eq!(response.header("Connection"), Some("close"));
    assert_eq!(
        response.header("Content-Length"),
        Some(response.body.len().to_string().as_str())
    );
    assert!(response.header("Date").is_some_and(|d| d.ends_with(" GMT")));
}

#[tokio::test]
async fn each_page_answers_with_its_content_type() {
    let server = Server::start(standby()).await;
    // The three paths serve one page (which is exactly the renderer's text:
    // `pages_over_http_are_the_renderers_text` in src/status_http.rs).
    let mut html: Option<String> = None;
    for path in ["/", "/status", "/status?refresh=1"] {
        let page = get(server.addr, path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_well_formed(&page);
        assert_eq!(
            page.header("Content-Type"),
            Some("text/html; charset=utf-8")
        );
        let first = html.get_or_insert_with(|| page.text().to_owned());
        assert_eq!(page.text(), first.as_str(), "{path}");
        assert!(page.text().contains(&format!("<h1>{STANDBY}</h1>")));
    }

    let json = get(server.addr, "/status.json").await;
    assert_eq!(json.status, 200);
    assert_well_formed(&json);
    assert_eq!(json.header("Content-Type"), Some("application/json"));
    let value: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(value["banner"], STANDBY);
    assert_eq!(value["state"]["role"], "standby");
    let snapshot: StatusSnapshot = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(snapshot, standby());

    let metrics = get(server.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_well_formed(&metrics);
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        metrics
            .text()
            .contains("\ntandem_role{node=\"2\",site=\"1\",role=\"standby\"} 1\n")
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn head_gives_the_headers_of_get_without_a_body() {
    let server = Server::start(standby()).await;
    for path in ["/", "/status.json", "/metrics"] {
        let full = get(server.addr, path).await;
        let head = exchange(
            server.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "{path}: {:?}", head.text());
        assert_eq!(head.header("Content-Type"), full.header("Content-Type"));
        assert_eq!(
            head.header("Content-Length"),
            Some(full.body.len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn other_paths_methods_and_malformed_requests_are_refused() {
    let server = Server::start(standby()).await;
    let addr = server.addr;

    let missing = get(addr, "/admin").await;
    assert_eq!(missing.status, 404);
    assert_well_formed(&missing);
    assert_eq!(
        missing.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        missing.text().contains("/status.json"),
        "{}",
        missing.text()
    );

    for method in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
        let refused = exchange(
            addr,
            format!("{method} /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(refused.status, 405, "{method}");
        assert_eq!(refused.header("Allow"), Some("GET, HEAD"), "{method}");
        assert_well_formed(&refused);
    }

    // Malformed requests: hyper refuses them with a bare 400; a missing or
    // doubled Host header is refused by the page itself, with a message.
    for request in [
        &b"\x00\x01\x02\xff\r\n\r\n"[..],
        b"GET /status\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    ] {
        let refused = exchange(addr, request).await;
        assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(request));
    }
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nHOST: y\r\n\r\n",
    ] {
        let refused = exchange(addr, request).await;
        assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(request));
        assert_well_formed(&refused);
        assert!(refused.text().contains("Host header"), "{}", refused.text());
    }
    let refused = exchange(addr, b"GET status HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.text().contains("path starting with `/`"),
        "{}",
        refused.text()
    );
    // HTTP/1.0 needs no Host.
    assert_eq!(exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await.status, 200);

    // After all that, the server still answers.
    assert_eq!(get(addr, "/").await.status, 200);
    server.stop().await.unwrap();
}

/// The documented limit on a request head (the server's `MAX_HEAD_BYTES`,
/// which a unit test holds to this).
const HEAD_LIMIT: usize = 8 * 1024;

#[tokio::test]
async fn a_request_head_over_8_kib_is_refused() {
    let server = Server::start(standby()).await;
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    while request.len() <= 16 * 1024 {
        request
            .extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let refused = exchange(server.addr, &request).await;
    assert_eq!(refused.status, 431);

    // A head just under the limit is fine.
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
    request.resize(HEAD_LIMIT - 4, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    assert_eq!(request.len(), HEAD_LIMIT);
    assert_eq!(exchange(server.addr, &request).await.status, 200);
}

#[tokio::test]
async fn a_slow_client_does_not_block_others() {
    let server = Server::start(standby()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /metrics HT").await.unwrap();

    // While the slow client dawdles, others are served, many at once (fewer
    // than the cap on one client's connections: all come from 127.0.0.1).
    let clients: Vec<_> = (0..48)
        .map(|i| {
            let addr = server.addr;
            let path = ["/", "/status.json", "/metrics"][i % 3];
            tokio::spawn(async move { get(addr, path).await.status })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), 200);
    }

    // The slow client finishes its request and is answered too.
    slow.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    slow.read_to_end(&mut reply).await.unwrap();
    let reply = parse_response(&reply);
    assert_eq!(reply.status, 200);
    assert!(reply.text().starts_with("# HELP tandem_info "));
    server.stop().await.unwrap();
}

/// Reads until the server closes the connection, which it must do within
/// `within`; returns what it sent (a reset counts as closing).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut reply = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut reply)).await {
        Ok(_) => reply,
        Err(_) => panic!("the server kept the connection open for {within:?}"),
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_disconnected() {
    let server = Server::start_with(standby(), Some(Duration::from_millis(200))).await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    // Closed after the 200 ms head timeout; 10 s is only the bound of a hang.
    let reply = closed_within(&mut stalled, Duration::from_secs(10)).await;
    assert!(reply.is_empty(), "{:?}", String::from_utf8_lossy(&reply));

    // A slowloris client, a byte now and then, is closed all the same: the
    // timeout counts from the connection, not from the last byte.
    let mut trickling = TcpStream::connect(server.addr).await.unwrap();
    let trickle = async {
        for byte in b"GET / HTTP/1.1\r\nX-a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" {
            if trickling.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .unwrap();
    let reply = closed_within(&mut trickling, Duration::from_secs(10)).await;
    assert!(reply.is_empty(), "{:?}", String::from_utf8_lossy(&reply));

    // A silent client is closed as well.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(10))
            .await
            .is_empty()
    );
    assert_eq!(get(server.addr, "/").await.status, 200);
}

#[tokio::test]
async fn the_page_shows_the_latest_snapshot() {
    let server = Server::start(standby()).await;
    assert!(
        get(server.addr, "/")
            .await
            .text()
            .contains(&format!("<h1>{STANDBY}</h1>"))
    );

    let mut active = standby();
    active.state.role = Role::Active;
    active.state.epoch = Epoch::new(5);
    active.holds_shared_address = true;
    server.status.send_replace(active);

    let page = get(server.addr, "/").await;
    assert!(page.text().contains(&format!("<h1>{ACTIVE}</h1>")));
    assert!(page.text().contains("<tr><th>Epoch</th><td>5</td></tr>"));
    let metrics = get(server.addr, "/metrics").await;
    assert!(
        metrics
            .text()
            .contains("\ntandem_active{node=\"2\",site=\"1\"} 1\n")
    );
    assert!(
        metrics
            .text()
            .contains("\ntandem_holds_shared_address{node=\"2\",site=\"1\"} 1\n")
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_open_connections() {
    let server = Server::start(standby()).await;
    let addr = server.addr;
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // Make sure the server has taken the connection before stopping it.
    assert_eq!(get(addr, "/").await.status, 200);

    server.stop().await.unwrap();

    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener still accepts");
}

// ---------------------------------------------------------------------------
// A real browser

/// How long one browser run may take before it counts as hung; it takes a
/// second or two.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is missing (Debian package `chromium`): run `bash .ci/install-deps` \
             as root to install it"
        )
    })
}

/// Kills a browser's whole process group (the browser and its helpers) when
/// dropped, also when the test fails.
struct ProcessGroup(nix::unistd::Pid);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs headless Chromium with a fresh profile and `args`; returns its stdout.
async fn browse(chromium: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {}: {e}; run `bash .ci/install-deps`",
            chromium.display()
        )
    });
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    let _group = ProcessGroup(nix::unistd::Pid::from_raw(pid));
    let output = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium {args:?} hung; killed it"))
        .unwrap();
    assert!(
        output.status.success(),
        "chromium {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text a reader sees first in a document's body: the first non-blank text
/// between tags.
fn first_visible_text(dom: &str) -> String {
    let body = &dom[dom.find("<body").expect("no <body> in the DOM")..];
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                if !text.trim().is_empty() {
                    break;
                }
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_banner_first_and_renders_the_page() {
    let chromium = chromium();
    let mut snapshot = standby();
    snapshot.alarms.push(Alarm::new(
        AlarmKind::Fault,
        "<b>not bold</b> & not markup",
        1_714_568_000_000,
    ));
    let server = Server::start(snapshot).await;
    let url = format!("http://{}/", server.addr);

    let dom = browse(&chromium, &["--dump-dom".into(), url.clone()]).await;
    assert_eq!(first_visible_text(&dom), STANDBY, "{dom}");
    assert!(dom.contains("<td>Replication Type: Local</td><td>Replication Type: Intra-site</td>"));
    assert!(
        dom.contains("&lt;b&gt;not bold&lt;/b&gt; &amp; not markup"),
        "{dom}"
    );
    assert!(!dom.contains("<b>"), "{dom}");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    browse(
        &chromium,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1024,768".into(),
            url,
        ],
    )
    .await;
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A 1024x768 page with text compresses to tens of kilobytes; a blank one to
    // a few hundred bytes.
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
    // Width and height from the IHDR chunk.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1024, 768));
    println!("screenshot: {}", screenshot.display());
    server.stop().await.unwrap();
}
