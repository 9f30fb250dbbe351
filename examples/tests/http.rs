//! The two-process example's server called over HTTP by clients none of us wrote: curl, and
//! a Python 3 script using only its standard library (`tests/http_client.py`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// The `server` example, started on a free port with a token; killed when dropped.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["127.0.0.1:0", "--token", "s3cret"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server example");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on tcp ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        ServerProcess { child, addr }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with `args` and `-w '\n%{http_code}'`: the body and the status.
fn curl(args: &[&str]) -> (String, u16) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (body.to_owned(), status.parse().expect("a status"))
}

const AUTH: &str = "authorization: Bearer s3cret";

#[test]
fn curl_calls_the_example_server() {
    let server = ServerProcess::start();
    let url = |path: &str| format!("http://{}{path}", server.addr);

    // Arguments by name; the result as JSON.
    let (body, status) = curl(&[
        "-H",
        AUTH,
        "-d",
        r#"{"name": "Ada"}"#,
        &url("/Greeter/hello"),
    ]);
    assert_eq!((body.trim(), status), (r#""Hello, Ada!""#, 200));

    // An enum argument, and the method's typed error.
    let (body, status) = curl(&[
        "-H",
        AUTH,
        "-d",
        r#"{"name": "Ada", "language": "French"}"#,
        &url("/Greeter/greet"),
    ]);
    assert_eq!((body.trim(), status), (r#""Bonjour, Ada !""#, 200));
    let (body, status) = curl(&[
        "-H",
        AUTH,
        "-d",
        r#"{"name": "Ada", "language": "Klingon"}"#,
        &url("/Greeter/greet"),
    ]);
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body.trim(),
        r#"{"error":{"kind":"application","value":{"UnknownLanguage":"Klingon"}}}"#
    );

    // A stream: one JSON line per item.
    let (body, status) = curl(&[
        "-H",
        AUTH,
        "-d",
        r#"{"name": "Ada", "times": 3}"#,
        &url("/Greeter/repeat"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.lines().collect::<Vec<_>>(),
        [
            r#""Hello #1, Ada!""#,
            r#""Hello #2, Ada!""#,
            r#""Hello #3, Ada!""#
        ]
    );

    // The Authorize hook: no token, a wrong token.
    let (body, status) = curl(&["-d", r#"{"name": "Ada"}"#, &url("/Greeter/hello")]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""kind":"unauthenticated""#), "{body}");
    let (body, status) = curl(&[
        "-H",
        "authorization: Bearer wrong",
        "-d",
        r#"{"name": "Ada"}"#,
        &url("/Greeter/hello"),
    ]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""kind":"permission_denied""#), "{body}");

    // A bad request, an unknown method, an oversized body.
    let (body, status) = curl(&[
        "-H",
        AUTH,
        "-d",
        r#"{"nam": "Ada"}"#,
        &url("/Greeter/hello"),
    ]);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("bad_request") && body.contains("nam"),
        "{body}"
    );
    let (body, status) = curl(&["-H", AUTH, "-d", "{}", &url("/Greeter/nope")]);
    assert_eq!(status, 404, "{body}");
    let big = std::env::temp_dir().join(format!("rpc-http-big-{}.json", std::process::id()));
    let name = "a".repeat(9 << 20);
    std::fs::write(&big, format!(r#"{{"name": "{name}"}}"#)).unwrap();
    let (body, status) = curl(&[
        "-H",
        AUTH,
        "--data-binary",
        &format!("@{}", big.display()),
        &url("/Greeter/hello"),
    ]);
    std::fs::remove_file(&big).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"), "{body}");

    // What the server hosts, as reflection knows it.
    let (body, status) = curl(&[&url("/")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"Greeter""#), "{body}");
    assert!(
        body.contains("A greeting for `name` in `language`"),
        "{body}"
    );

    // The binary protocol still works on the same port.
    let output: Output = Command::new(env!("CARGO_BIN_EXE_client"))
        .args([server.addr.as_str(), "Ada"])
        .output()
        .expect("run the client example");
    // The client sends no token: the server refuses its call, with the hook's message.
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("authorization: Bearer"), "{text}");
}

#[test]
fn a_python_script_calls_the_example_server() {
    let server = ServerProcess::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http_client.py");
    let output = Command::new("python3")
        .args([script, &server.addr, "s3cret"])
        .output()
        .expect("run python3 (apt-get install python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "hello: Hello, Ada!",
            "greet: Bonjour, Ada !",
            "typed error 422: {'UnknownLanguage': 'Klingon'}",
            "stream: ['Hello #1, Ada!', 'Hello #2, Ada!']",
            "refused 401: unauthenticated",
            "too large 413: too_large",
        ]
    );
}
