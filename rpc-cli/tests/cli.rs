//! The `rpc` command against a running example server (the two-process example's Greeter),
//! over TCP, a Unix socket and TLS.

use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rpc_core::Server;
use rpc_examples::{GreeterServer, Greetings};

/// Runs `rpc` with `args`: (exit code, stdout, stderr).
async fn rpc(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rpc"))
            .args(&args)
            .output()
            .expect("run rpc")
    })
    .await
    .expect("the rpc process");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn greeter() -> Server {
    Server::new().add_service(GreeterServer::new(Greetings::default()))
}

/// Every command against the server at `addr` (with `extra` options, for TLS).
async fn exercise(addr: &str, extra: &[&str]) {
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rpc(&args).await
    };

    let (code, out, err) = run(with(&["list", addr])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Greeter: hello, count, greet, repeat"),
        "{out}"
    );
    assert!(out.contains("rpc.Health: check"), "{out}");
    assert!(out.contains("rpc.Reflection: services, describe"), "{out}");

    let (code, out, err) = run(with(&["describe", addr, "Greeter"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("/// A greeting for `name` in `language`, or why there is none."),
        "{out}"
    );
    assert!(
        out.contains(
            "async fn greet(&self, name: String, language: Language) -> Result<String, GreetError>;"
        ),
        "{out}"
    );

    let (code, out, err) = run(with(&["call", addr, "Greeter.hello", r#"{"name": "Ada"}"#])).await;
    assert_eq!((code, out.trim()), (0, r#""Hello, Ada!""#), "{err}");

    let (code, out, err) = run(with(&[
        "call",
        addr,
        "Greeter.greet",
        r#"{"name": "Ada", "language": "Klingon"}"#,
    ]))
    .await;
    assert_eq!(
        (code, out.trim()),
        (1, r#"{"error":{"UnknownLanguage":"Klingon"}}"#),
        "{err}"
    );

    let (code, out, err) = run(with(&[
        "call",
        addr,
        "Greeter.repeat",
        r#"{"name": "Ada", "times": 2}"#,
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [r#""Hello #1, Ada!""#, r#""Hello #2, Ada!""#]
    );

    let (code, _, err) = run(with(&["call", addr, "Greeter.hello", r#"{"nom": 1}"#])).await;
    assert_eq!(code, 1);
    assert!(err.contains("nom"), "{err}");

    let (code, out, err) = run(with(&["health", addr])).await;
    assert_eq!((code, out.trim()), (0, "Serving"), "{err}");
    let (code, out, _) = run(with(&["health", addr, "Nope"])).await;
    assert_eq!((code, out.trim()), (1, "Unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_over_tcp_and_unix() {
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tcp = tokio::spawn(greeter().serve(listener));
    exercise(&addr, &[]).await;
    tcp.abort();

    let path = std::env::temp_dir().join(format!("rpc-cli-{}.sock", std::process::id()));
    let listener = rpc_transport::unix::bind(&path).await.unwrap();
    let unix = tokio::spawn(greeter().serve(listener));
    exercise(&format!("unix:{}", path.display()), &[]).await;
    unix.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_over_tls() {
    use rpc_transport::tls;

    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let config = tls::server_config(cert.pem(), key.serialize_pem()).unwrap();
    let listener = tls::bind("127.0.0.1:0", config).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(greeter().serve(listener));
    let ca_path = std::env::temp_dir().join(format!("rpc-cli-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let ca_arg = ca_path.display().to_string();
    exercise(
        &format!("tls://127.0.0.1:{port}"),
        &["--ca", &ca_arg, "--server-name", "localhost"],
    )
    .await;
    server.abort();
    std::fs::remove_file(&ca_path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_check_names_breaking_changes() {
    let dir = std::env::temp_dir().join(format!("rpc-cli-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recorded = dir.join("greeter.json");
    let mut schema = rpc_examples::GreeterClient::schema().clone();
    std::fs::write(&recorded, schema.to_json()).unwrap();

    // Against a running server of the same build: compatible.
    let listener = rpc_transport::tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(greeter().serve(listener));
    let recorded_arg = recorded.display().to_string();
    let (code, out, err) = rpc(&["schema", "check", &recorded_arg, "--server", &addr]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("compatible"), "{out}");
    server.abort();

    // A recorded schema whose `hello` took a number: breaking in both roles.
    let hello = schema
        .methods
        .iter_mut()
        .find(|m| m.name == "hello")
        .unwrap();
    hello.args[0].value.schema = Some(rpc_core::schema::Schema {
        root: rpc_core::schema::Type::U32,
        types: Default::default(),
    });
    let changed = dir.join("changed.json");
    std::fs::write(&changed, schema.to_json()).unwrap();
    let current = dir.join("current.json");
    std::fs::write(&current, rpc_examples::GreeterClient::schema().to_json()).unwrap();
    let (code, out, _) = rpc(&[
        "schema",
        "check",
        &changed.display().to_string(),
        &current.display().to_string(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 breaking change(s)"), "{out}");
    assert!(
        out.contains("argument `name: String` of `Greeter::hello` differs: the client sends `u32` where the server reads `String`"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
