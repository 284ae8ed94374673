// A Proxy-Wasm HTTP filter written against the public AssemblyScript SDK
// (@solo-io/proxy-runtime). The Wasm host tests load it to show that a module built by
// a third-party SDK, not by this repository's own headers, runs in OmniRelay.
//
// Behaviour, driven by the plugin configuration (a string, e.g. "blue"):
//   - a request without x-sdk-key is answered 403 by the SDK's local-response call;
//   - every other request gets x-sdk-config: <configuration> upstream;
//   - a request with x-sdk-user pauses while the root context asks the "authz" cluster
//     (an HTTP callout); the answer's x-verdict "allow" resumes it with x-sdk-verdict
//     upstream, any other verdict answers 403, no answer at all 503;
//   - a request body is buffered until its end; one containing "forbidden" is answered 400;
//     the counter sdk_test.request_body_calls counts the body callbacks;
//   - every response gets x-sdk-response: <configuration>.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, FilterDataStatusValues,
  GrpcStatusValues, Counter, HeaderPair, Headers, WasmResultValues, stream_context, send_local_response, continue_request,
} from "@solo-io/proxy-runtime";
import { BufferTypeValues, get_buffer_bytes } from "@solo-io/proxy-runtime/runtime";

const ROOT_ID = "omnirelay_sdk_test";

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function deny(code: u32, details: string, body: string): void {
  const headers: Headers = [pair("x-denied-by", "proxy-runtime")];
  send_local_response(code, details, String.UTF8.encode(body), headers,
                      GrpcStatusValues.InvalidCode);
}

// The SDK has no closures: the callout answer arrives here with the paused stream's context.
function onAuthzAnswer(origin: Context, headers: u32, bodySize: usize, trailers: u32): void {
  const verdict = stream_context.headers.http_callback.get("x-verdict");
  if (verdict == "") {
    deny(503, "sdk_authz_unavailable", "authz unavailable\n");
    return;
  }
  if (verdict != "allow") {
    deny(403, "sdk_authz_denied", "denied by authz\n");
    return;
  }
  stream_context.headers.request.add("x-sdk-verdict", verdict);
  continue_request();
}

class SdkRoot extends RootContext {
  // Defined when the host creates the root context (proxy_on_context_create).
  bodyCalls: Counter = new Counter("sdk_test.request_body_calls");

  createContext(context_id: u32): Context {
    return new SdkFilter(context_id, this);
  }
}

class SdkFilter extends Context {
  constructor(context_id: u32, root_context: SdkRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (stream_context.headers.request.get("x-sdk-key") == "") {
      deny(403, "sdk_denied", "denied by the sdk filter\n");
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-sdk-config", this.root_context.getConfiguration());
    const user = stream_context.headers.request.get("x-sdk-user");
    if (user == "") {
      return FilterHeadersStatusValues.Continue;
    }
    const call: Headers = [
      pair(":method", "GET"), pair(":path", "/check"), pair(":authority", "authz.internal"),
      pair("x-user", user),
    ];
    const result = this.root_context.httpCall("authz", call, new ArrayBuffer(0), [], 2000, this,
                                              onAuthzAnswer);
    if (result != WasmResultValues.Ok) {
      deny(500, "sdk_callout_refused", "callout refused\n");
    }
    return FilterHeadersStatusValues.StopIteration;
  }

  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    (this.root_context as SdkRoot).bodyCalls.increment(1);
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;  // called again with more
    }
    const body = get_buffer_bytes(BufferTypeValues.HttpRequestBody, 0, body_buffer_length as u32);
    if (String.UTF8.decode(body).includes("forbidden")) {
      deny(400, "sdk_body_rejected", "rejected by the sdk filter\n");
      return FilterDataStatusValues.StopIterationNoBuffer;
    }
    return FilterDataStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-sdk-response", this.root_context.getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new SdkRoot(context_id), ROOT_ID);
