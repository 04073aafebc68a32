//! Rust client <-> official `anvil-uplink==0.7.0` Python client, through the
//! real server.

use std::time::Duration;

use ferrolink_client::{CallErrorKind, CallOptions, Client, HandlerError, Request};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::python::PyProcess;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn python_provider(server: &TestServer) -> PyProcess {
    let mut p = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    p.expect_line("READY", WAIT);
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_calls_python_and_errors_keep_their_types() {
    let server = TestServer::start().await;
    let _py = python_provider(&server);
    let client = Client::builder(server.url(), &server.client_key)
        .connect()
        .await
        .unwrap();

    let sum: f64 = client.call("add", (2.5, 3)).await.unwrap();
    assert_eq!(sum, 5.5);
    let text: String = client.call("echo", ("héllo ✓",)).await.unwrap();
    assert_eq!(text, "héllo ✓");
    let v: Value = client
        .call_with(
            "echo_kwargs",
            (1,),
            CallOptions::default().kwargs(json!({"unit": "C"})),
        )
        .await
        .unwrap();
    assert_eq!(v, json!({"args": [1], "kwargs": {"unit": "C"}}));

    let e = client
        .call::<Value>("fail_value", ("offset must be positive",))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::Remote);
    assert_eq!(e.remote_type(), Some("ValueError"));
    assert_eq!(e.remote().unwrap().message, "offset must be positive");
    assert!(
        !e.remote().unwrap().trace.is_empty(),
        "Python sends its trace"
    );

    let e = client
        .call::<Value>("fail_no_function", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::NoSuchFunction, "{e}");
    let e = client
        .call::<Value>("no_such_function", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::NoSuchFunction);
    let e = client
        .call::<u32>("echo", ("not a number",))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::Decode);

    // A slow function and a short per-call deadline.
    let e = client
        .call_with::<Value>(
            "hang",
            (5,),
            CallOptions::default().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::Timeout);
    client.disconnect().await;
    server.shutdown().await;
}

async fn rust_provider(server: &TestServer) -> Client {
    Client::builder(server.url(), &server.server_key)
        .register("greet", |(name,): (String,)| async move {
            Ok::<_, HandlerError>(format!("hello, {name}"))
        })
        .register("divide", |(a, b): (f64, f64)| async move {
            if b == 0.0 {
                return Err(HandlerError::new("ZeroDivisionError", "division by zero"));
            }
            Ok(a / b)
        })
        .register("missing_on_purpose", |(): ()| async move {
            Err::<(), _>(HandlerError::new(
                "anvil.server.NoServerFunctionError",
                "raised from Rust",
            ))
        })
        .register_raw("relay", |req: Request| async move {
            // A nested call made from inside this call, back through the server.
            let name = req.args[0].as_str().unwrap_or_default().to_owned();
            let args = req
                .args
                .as_array()
                .map(|a| a[1..].to_vec())
                .unwrap_or_default();
            req.context
                .call::<Value>(&name, args)
                .await
                .map_err(HandlerError::msg)
        })
        .register_raw("kwargs_of", |req: Request| async move {
            Ok::<_, HandlerError>(Value::Object(req.kwargs))
        })
        .connect()
        .await
        .unwrap()
}

fn py_call(server: &TestServer, name: &str, args: &str) -> Value {
    let mut p = PyProcess::spawn(
        "caller.py",
        &[&server.url(), &server.client_key, "call", name, args],
    );
    p.result(WAIT)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_calls_rust_and_errors_arrive_as_python_exceptions() {
    let server = TestServer::start().await;
    let _rust = rust_provider(&server).await;
    let _py = python_provider(&server);

    assert_eq!(
        py_call(&server, "greet", r#"["Ada"]"#),
        json!({"ok": "hello, Ada"})
    );
    assert_eq!(py_call(&server, "divide", "[7, 2]"), json!({"ok": 3.5}));
    let r = py_call(&server, "divide", "[1, 0]");
    assert_eq!(r["error"], "AnvilWrappedError", "{r}");
    assert_eq!(r["error_type"], "ZeroDivisionError");
    assert_eq!(r["message"], "division by zero");
    let r = py_call(&server, "missing_on_purpose", "[]");
    assert_eq!(r["error"], "NoServerFunctionError", "{r}");
    let r = py_call(&server, "greet", "[1, 2, 3]");
    assert_eq!(r["error_type"], "TypeError", "{r}");
    // Python -> Rust -> (nested) Python -> back.
    assert_eq!(
        py_call(&server, "relay", r#"["add", 40, 2]"#),
        json!({"ok": 42})
    );
    server.shutdown().await;
}
