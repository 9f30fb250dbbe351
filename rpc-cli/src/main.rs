//! `rpc`: list, describe and call the services of any rpc server, with JSON.
//!
//! ```text
//! rpc list ADDR                          the services a server hosts, with their methods
//! rpc describe ADDR SERVICE [--json]     a service's methods, types and docs (or its schema)
//! rpc call ADDR SERVICE.METHOD [JSON]    a call: JSON object of the arguments by name
//! rpc health ADDR [SERVICE]              the health check
//! rpc schema check RECORDED CURRENT      breaking changes between two schema files
//! rpc schema check RECORDED --server ADDR
//! ```
//!
//! `ADDR` is `host:port` (TCP), a path containing `/` or `unix:PATH` (a Unix socket), or
//! `tls://host:port` (TLS; with `--ca FILE`, and `--cert FILE --key FILE` for mutual TLS,
//! `--server-name NAME` when the certificate's name is not the host). `call` takes
//! `-H key:value` for metadata (repeatable) and `--timeout MS`. A stream prints one JSON
//! line per item. Exit status: 0 on success, 1 when the call or check fails (the error on
//! stderr; a method's typed error on stdout as `{"error": ...}`), 2 for a usage error.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use rpc_core::health::{HealthClient, HealthStatus};
use rpc_core::json::{CallOptions, JsonClient, JsonReply};
use rpc_core::reflection::ReflectionClient;
use rpc_core::schema::ServiceSchema;
use serde_json::Value;

const USAGE: &str = "usage:
  rpc list ADDR
  rpc describe ADDR SERVICE [--json]
  rpc call ADDR SERVICE.METHOD [JSON] [-H key:value]... [--timeout MS]
  rpc health ADDR [SERVICE]
  rpc schema check RECORDED.json (CURRENT.json | --server ADDR)
ADDR: host:port, unix:PATH (or a path with '/'), tls://host:port [--ca FILE] [--cert FILE --key FILE] [--server-name NAME]";

/// A failure to report: the message, and whether it is a usage error.
struct Failure {
    message: String,
    usage: bool,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure {
            message: err.to_string(),
            usage: false,
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        usage: true,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args).await {
        Ok(code) => code,
        Err(failure) if failure.usage => {
            eprintln!("rpc: {}\n{USAGE}", failure.message);
            ExitCode::from(2)
        }
        Err(failure) => {
            eprintln!("rpc: {}", failure.message);
            ExitCode::from(1)
        }
    }
}

/// The command line: positional arguments and options.
struct Line {
    positional: Vec<String>,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    json: bool,
    tls: TlsOptions,
    server: Option<String>,
}

#[derive(Default)]
struct TlsOptions {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
}

fn parse(args: Vec<String>) -> Result<Line, Failure> {
    let mut line = Line {
        positional: Vec::new(),
        headers: Vec::new(),
        timeout: None,
        json: false,
        tls: TlsOptions::default(),
        server: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-H" | "--header" => {
                let header = value("-H")?;
                let (key, val) = header
                    .split_once(':')
                    .ok_or_else(|| usage(format!("-H {header}: write key:value")))?;
                line.headers
                    .push((key.trim().to_ascii_lowercase(), val.trim().to_owned()));
            }
            "--timeout" => {
                let ms = value("--timeout")?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| usage(format!("--timeout {ms}: milliseconds, a whole number")))?;
                line.timeout = Some(Duration::from_millis(ms));
            }
            "--json" => line.json = true,
            "--ca" => line.tls.ca = Some(value("--ca")?),
            "--cert" => line.tls.cert = Some(value("--cert")?),
            "--key" => line.tls.key = Some(value("--key")?),
            "--server-name" => line.tls.server_name = Some(value("--server-name")?),
            "--server" => line.server = Some(value("--server")?),
            "-h" | "--help" => return Err(usage("")),
            _ => line.positional.push(arg),
        }
    }
    Ok(line)
}

async fn run(args: Vec<String>) -> Result<ExitCode, Failure> {
    let line = parse(args)?;
    let words: Vec<&str> = line.positional.iter().map(String::as_str).collect();
    match words[..] {
        ["list", addr] => list(&line, addr).await,
        ["describe", addr, service] => describe(&line, addr, service).await,
        ["call", addr, target] => call(&line, addr, target, "{}").await,
        ["call", addr, target, args] => call(&line, addr, target, args).await,
        ["health", addr] => health(&line, addr, "").await,
        ["health", addr, service] => health(&line, addr, service).await,
        ["schema", "check", recorded, current] if line.server.is_none() => {
            let current = read_schema(current)?;
            check(recorded, &current)
        }
        ["schema", "check", recorded] => {
            let Some(addr) = &line.server else {
                return Err(usage("schema check needs CURRENT.json or --server ADDR"));
            };
            let recorded_schema = read_schema(recorded)?;
            let current = describe_service(&line, addr, &recorded_schema.name).await?;
            check(recorded, &current)
        }
        [] => Err(usage("no command")),
        _ => Err(usage(format!("unknown command `{}`", words.join(" ")))),
    }
}

/// A connection to `addr`.
async fn connect(line: &Line, addr: &str) -> Result<Box<dyn rpc_core::Transport>, Failure> {
    let transport: Box<dyn rpc_core::Transport> = if let Some(host) = addr.strip_prefix("tls://") {
        use rpc_transport::tls;
        let ca = line
            .tls
            .ca
            .as_ref()
            .ok_or_else(|| usage("a tls:// address needs --ca FILE (the server's CA)"))?;
        let ca = std::fs::read(ca).map_err(|err| format!("--ca {ca}: {err}"))?;
        let config = match (&line.tls.cert, &line.tls.key) {
            (Some(cert), Some(key)) => tls::client_config_mtls(
                ca,
                std::fs::read(cert).map_err(|err| format!("--cert {cert}: {err}"))?,
                std::fs::read(key).map_err(|err| format!("--key {key}: {err}"))?,
            )?,
            (None, None) => tls::client_config(ca)?,
            _ => return Err(usage("--cert and --key go together")),
        };
        let name = match &line.tls.server_name {
            Some(name) => name.clone(),
            None => host
                .rsplit_once(':')
                .map_or(host, |(name, _)| name)
                .trim_matches(['[', ']'])
                .to_owned(),
        };
        Box::new(tls::connect(host, &name, config).await?)
    } else if let Some(path) = addr.strip_prefix("unix:") {
        Box::new(rpc_transport::unix::connect(path).await?)
    } else if addr.contains('/') {
        Box::new(rpc_transport::unix::connect(addr).await?)
    } else {
        Box::new(rpc_transport::tcp::connect(addr).await?)
    };
    Ok(transport)
}

async fn reflection(line: &Line, addr: &str) -> Result<ReflectionClient, Failure> {
    Ok(ReflectionClient::new(connect(line, addr).await?))
}

async fn describe_service(
    line: &Line,
    addr: &str,
    service: &str,
) -> Result<ServiceSchema, Failure> {
    let reflection = reflection(line, addr).await?;
    match reflection.describe(service.to_owned()).await? {
        Some(schema) => Ok(schema),
        None => {
            let hosted = reflection.services().await?.join(", ");
            Err(format!("{addr} does not host `{service}`; it hosts {hosted}").into())
        }
    }
}

async fn list(line: &Line, addr: &str) -> Result<ExitCode, Failure> {
    let reflection = reflection(line, addr).await?;
    for name in reflection.services().await? {
        let methods = match reflection.describe(name.clone()).await? {
            Some(schema) => schema
                .methods
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        };
        println!("{name}: {methods}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn describe(line: &Line, addr: &str, service: &str) -> Result<ExitCode, Failure> {
    let schema = describe_service(line, addr, service).await?;
    if line.json {
        println!("{}", schema.to_json());
        return Ok(ExitCode::SUCCESS);
    }
    print_docs(&schema.docs, "");
    println!("service {} {{", schema.name);
    for method in &schema.methods {
        print_docs(&method.docs, "    ");
        if method.idempotent {
            println!("    #[rpc(idempotent)]");
        }
        let args: Vec<String> = method
            .args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.value.written))
            .collect();
        println!(
            "    async fn {}(&self{}{}) -> {};",
            method.name,
            if args.is_empty() { "" } else { ", " },
            args.join(", "),
            method.result.written
        );
        for value in method.args.iter().map(|a| &a.value).chain([&method.result]) {
            if let Some(why) = &value.untraced {
                println!("    // `{}` could not be traced: {why}", value.written);
            }
        }
    }
    println!("}}");
    Ok(ExitCode::SUCCESS)
}

fn print_docs(docs: &str, indent: &str) {
    for doc in docs.lines() {
        println!("{indent}/// {doc}");
    }
}

async fn call(line: &Line, addr: &str, target: &str, args: &str) -> Result<ExitCode, Failure> {
    let (service, method) = target
        .rsplit_once('.')
        .ok_or_else(|| usage(format!("`{target}`: write SERVICE.METHOD")))?;
    let args = match serde_json::from_str::<Value>(args) {
        Ok(Value::Object(args)) => args,
        Ok(_) => return Err(usage("the arguments must be a JSON object, by name")),
        Err(err) => return Err(usage(format!("the arguments are not JSON: {err}"))),
    };
    let schema = describe_service(line, addr, service).await?;
    let client = JsonClient::new(connect(line, addr).await?, schema);
    let options = CallOptions {
        metadata: line
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), bytes::Bytes::from(v.clone())))
            .collect(),
        timeout: line.timeout,
    };
    match client.call(method, &args, &options).await? {
        JsonReply::Value(value) => {
            println!("{value}");
            Ok(ExitCode::SUCCESS)
        }
        JsonReply::Error(value) => {
            println!("{}", serde_json::json!({ "error": value }));
            Ok(ExitCode::from(1))
        }
        JsonReply::Stream(mut stream) => {
            while let Some(item) = stream.next().await {
                println!("{}", item?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn health(line: &Line, addr: &str, service: &str) -> Result<ExitCode, Failure> {
    let client = HealthClient::new(connect(line, addr).await?);
    let status = client.check(service.to_owned()).await?;
    println!("{status:?}");
    Ok(if status == HealthStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn read_schema(path: &str) -> Result<ServiceSchema, Failure> {
    let json = std::fs::read_to_string(path).map_err(|err| format!("{path}: {err}"))?;
    ServiceSchema::from_json(&json).map_err(|err| format!("{path}: {err}").into())
}

fn check(recorded: &str, current: &ServiceSchema) -> Result<ExitCode, Failure> {
    let changes = read_schema(recorded)?.breaking_changes(current);
    if changes.is_empty() {
        println!("compatible: no breaking change against {recorded}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} breaking change(s) against {recorded}:", changes.len());
    for change in changes {
        println!("  - {change}");
    }
    Ok(ExitCode::from(1))
}
