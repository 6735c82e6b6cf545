//! An API-server stand-in: an HTTP server on 127.0.0.1 speaking the `resource.k8s.io/v1` paths
//! the driver uses (ResourceSlice list/create/replace/delete, ResourceClaim get), with an
//! in-memory store, resource versions, conflicts and a log of every request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Store {
    pub slices: BTreeMap<String, Value>,
    pub claims: BTreeMap<(String, String), Value>,
    pub version: u64,
    /// `METHOD path?query` of every request, in order.
    pub log: Vec<String>,
}

pub type Shared = Arc<Mutex<Store>>;

pub struct ApiServer {
    pub url: String,
    pub store: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, body: &Value) -> Response {
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn record(store: &Shared, method: &Method, uri: &Uri) {
    store.lock().unwrap().log.push(format!("{method} {uri}"));
}

fn field_selector_node(query: Option<&str>) -> Option<String> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("fieldSelector=")?;
        let decoded = value.replace("%3D", "=").replace("%3d", "=");
        decoded.strip_prefix("spec.nodeName=").map(str::to_string)
    })
}

async fn list_slices(State(store): State<Shared>, method: Method, uri: Uri, RawQuery(query): RawQuery) -> Response {
    record(&store, &method, &uri);
    let node = field_selector_node(query.as_deref());
    let store = store.lock().unwrap();
    let items: Vec<&Value> = store
        .slices
        .values()
        .filter(|slice| node.as_deref().is_none_or(|node| slice["spec"]["nodeName"] == node))
        .collect();
    let body = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
        "metadata": {"resourceVersion": store.version.to_string()}, "items": items});
    ok(StatusCode::OK, &body)
}

async fn create_slice(State(store): State<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    record(&store, &method, &uri);
    let mut slice: Value = serde_json::from_slice(&body).unwrap();
    let name = slice["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut store = store.lock().unwrap();
    if store.slices.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("resourceslices {name:?} already exists"),
        );
    }
    store.version += 1;
    slice["metadata"]["resourceVersion"] = json!(store.version.to_string());
    slice["metadata"]["uid"] = json!(format!("uid-{name}"));
    store.slices.insert(name, slice.clone());
    ok(StatusCode::CREATED, &slice)
}

async fn replace_slice(
    State(store): State<Shared>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    record(&store, &method, &uri);
    let mut slice: Value = serde_json::from_slice(&body).unwrap();
    let mut store = store.lock().unwrap();
    let Some(stored) = store.slices.get(&name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("resourceslices {name:?} not found"),
        );
    };
    if stored["metadata"]["resourceVersion"] != slice["metadata"]["resourceVersion"] {
        return status(StatusCode::CONFLICT, "Conflict", "the object has been modified".into());
    }
    let uid = stored["metadata"]["uid"].clone();
    store.version += 1;
    slice["metadata"]["resourceVersion"] = json!(store.version.to_string());
    slice["metadata"]["uid"] = uid;
    store.slices.insert(name, slice.clone());
    ok(StatusCode::OK, &slice)
}

async fn delete_slice(State(store): State<Shared>, Path(name): Path<String>, method: Method, uri: Uri) -> Response {
    record(&store, &method, &uri);
    let mut store = store.lock().unwrap();
    match store.slices.remove(&name) {
        Some(slice) => ok(StatusCode::OK, &slice),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("resourceslices {name:?} not found"),
        ),
    }
}

async fn get_claim(
    State(store): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    record(&store, &method, &uri);
    let store = store.lock().unwrap();
    match store.claims.get(&(namespace, name.clone())) {
        Some(claim) => ok(StatusCode::OK, claim),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("resourceclaims {name:?} not found"),
        ),
    }
}

impl ApiServer {
    pub async fn start() -> Self {
        let store: Shared = Arc::default();
        let router = Router::new()
            .route(
                "/apis/resource.k8s.io/v1/resourceslices",
                get(list_slices).post(create_slice),
            )
            .route(
                "/apis/resource.k8s.io/v1/resourceslices/{name}",
                axum::routing::put(replace_slice).delete(delete_slice),
            )
            .route(
                "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}",
                get(get_claim),
            )
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, store, task }
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file naming this server (for the binary).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: nobody\ncurrent-context: stand-in\nusers:\n- name: nobody\n  user: {{}}\n",
            self.url
        )
    }

    /// Stores a claim allocated `results` (`(request, driver, pool, device)`).
    pub fn put_claim(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        annotations: Value,
        results: &[(&str, &str, &str, &str)],
    ) {
        let results: Vec<Value> = results
            .iter()
            .map(|(request, driver, pool, device)| {
                json!({"request": request, "driver": driver, "pool": pool, "device": device})
            })
            .collect();
        let claim = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations},
            "spec": {"devices": {"requests": []}},
            "status": {"allocation": {"devices": {"results": results}}}
        });
        self.store
            .lock()
            .unwrap()
            .claims
            .insert((namespace.to_string(), name.to_string()), claim);
    }

    pub fn slices(&self) -> BTreeMap<String, Value> {
        self.store.lock().unwrap().slices.clone()
    }

    pub fn log(&self) -> Vec<String> {
        self.store.lock().unwrap().log.clone()
    }
}
