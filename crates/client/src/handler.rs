//! Registered functions: what runs when the server calls this client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use ferrolink_proto::client_session::IncomingCall;
use futures_util::FutureExt as _;

use crate::client::{CallOptions, Client, WeakClient};
use crate::driver::Responder;
use crate::error::{CallError, HandlerError};

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<String, HandlerError>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// An incoming call, for functions registered with
/// [`crate::ClientBuilder::register_raw`].
#[derive(Debug)]
pub struct Request {
    /// The function name as called.
    pub command: String,
    /// Positional arguments (a JSON array).
    pub args: Value,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Lets the function call others within this call's context.
    pub context: CallContext,
}

/// The context of an incoming call: calls made through it carry this call's
/// `call-stack-id`, so the server runs them in the caller's context (for
/// example, to ask who the browser user behind the call is).
#[derive(Debug, Clone)]
pub struct CallContext {
    pub(crate) client: Client,
    pub(crate) call_stack_id: String,
}

impl CallContext {
    /// Calls `name` from inside this call.
    pub async fn call<R: DeserializeOwned>(
        &self,
        name: &str,
        args: impl Serialize,
    ) -> Result<R, CallError> {
        let options = CallOptions {
            call_stack_id: Some(self.call_stack_id.clone()),
            ..CallOptions::default()
        };
        self.client.call_with(name, args, options).await
    }

    /// The client this call arrived on.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Wraps a typed async function as a handler: arguments are decoded from the
/// positional array into `A` (a tuple, or anything deserialisable from an
/// array), the result is encoded from `R`.
pub(crate) fn typed<A, R, F, Fut>(f: F) -> Handler
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    let f = Arc::new(f);
    raw(move |req: Request| {
        let f = f.clone();
        async move { f(decode_args(&req.command, req.args)?).await }
    })
}

/// Decodes positional arguments into `A`.
fn decode_args<A: DeserializeOwned>(command: &str, args: Value) -> Result<A, HandlerError> {
    // `()` reads from null, not from `[]`: try that first for no arguments.
    if args.as_array().is_some_and(Vec::is_empty)
        && let Ok(a) = serde_json::from_value::<A>(Value::Null)
    {
        return Ok(a);
    }
    serde_json::from_value(args).map_err(|e| {
        HandlerError::new(
            "TypeError",
            format!("{command}: the arguments do not fit this function: {e}"),
        )
    })
}

/// Wraps an async function taking the whole [`Request`].
pub(crate) fn raw<R, F, Fut>(f: F) -> Handler
where
    R: Serialize + Send + 'static,
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |req: Request| {
        let f = f.clone();
        Box::pin(async move {
            let command = req.command.clone();
            let result = f(req).await?;
            serde_json::to_string(&result).map_err(|e| {
                HandlerError::new(
                    "anvil.server.SerializationError",
                    format!("{command}: the result could not be encoded as JSON: {e}"),
                )
            })
        }) as HandlerFuture
    })
}

/// Runs a registered function for an incoming call on its own task.
pub(crate) fn dispatch(
    handlers: &HashMap<String, Handler>,
    client: &WeakClient,
    respond: &Responder,
    call: IncomingCall,
) {
    let Some(handler) = handlers.get(&call.command).cloned() else {
        let message = format!(
            "No server function matching \"{}\" has been registered",
            call.command
        );
        let error = HandlerError::new(ferrolink_proto::error_type::NO_SERVER_FUNCTION, message);
        let _ = respond.send((call.id, Err(error)));
        return;
    };
    let Some(client) = client.upgrade() else {
        return;
    };
    let call_stack_id = serde_json::from_str::<String>(&call.id).unwrap_or_default();
    let args: Value = serde_json::from_str(&call.args).unwrap_or(Value::Array(Vec::new()));
    let kwargs: Map<String, Value> = serde_json::from_str(&call.kwargs).unwrap_or_default();
    let respond = respond.clone();
    tracing::debug!(command = %call.command, "incoming call");
    tokio::spawn(async move {
        let request = Request {
            command: call.command,
            args,
            kwargs,
            context: CallContext {
                client,
                call_stack_id,
            },
        };
        // A panicking function must not leave its caller waiting.
        let result = std::panic::AssertUnwindSafe(handler(request))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(HandlerError::new("Exception", "the function panicked")));
        let _ = respond.send((call.id, result));
    });
}
