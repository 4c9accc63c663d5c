//! What every request meets first: the `Host` check (421 otherwise; see `hosts`), then its
//! count by route, method and status once answered (see `metrics`).
//!
//! One tower layer written out rather than two `axum::middleware::from_fn` layers: each
//! `from_fn` layer clones and boxes the service inside it and boxes every request's future.
//! This one passes a request on without allocating; a watch on the key map, which passes the
//! layers twice (once to be held, once to be answered), paid for those twice. Measured figures
//! are in BENCHMARKS.md ("Watching instead of polling", unchanged map).

use crate::hosts::{misdirected, request_allowed, AllowedHosts};
use crate::log::{debug, enabled, Level};
use crate::metrics;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use axum::Router;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// `router` with the front door before every route and fallback of it.
pub fn front_door(router: Router, hosts: Arc<AllowedHosts>) -> Router {
    router.layer(FrontDoorLayer { hosts })
}

#[derive(Clone)]
struct FrontDoorLayer {
    hosts: Arc<AllowedHosts>,
}

impl<S> Layer<S> for FrontDoorLayer {
    type Service = FrontDoor<S>;

    fn layer(&self, inner: S) -> FrontDoor<S> {
        FrontDoor {
            inner,
            hosts: Arc::clone(&self.hosts),
        }
    }
}

#[derive(Clone)]
pub struct FrontDoor<S> {
    inner: S,
    hosts: Arc<AllowedHosts>,
}

impl<S> Service<Request> for FrontDoor<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // A refused Host is counted nowhere (its request names no route of ours).
        if !request_allowed(&self.hosts, &request) {
            return Answer::Refused;
        }
        let count = Count {
            // Both cheap to keep: a shared string, and a method without allocation for the
            // standard ones.
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: request.method().clone(),
            started: Instant::now(),
        };
        Answer::Passed {
            inner: self.inner.call(request),
            count,
        }
    }
}

pin_project! {
    /// A request's answer: refused at the door, or the inner service's, counted.
    #[project = AnswerProjection]
    pub enum Answer<F> {
        Refused,
        Passed { #[pin] inner: F, count: Count },
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProjection::Refused => Poll::Ready(Ok(misdirected())),
            AnswerProjection::Passed { inner, count } => {
                let Ok(response) = ready!(inner.poll(cx));
                count.answered(&response);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// What a request is counted by, taken before it is passed on.
pub struct Count {
    route: Option<MatchedPath>,
    method: Method,
    started: Instant,
}

impl Count {
    /// Counts the request by the route that answered it (its template: never the path a
    /// client sent), method and status.
    fn answered(&self, response: &Response) {
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let method = self.method.as_str();
        let status = response.status();
        metrics::http_request(route, method, status, self.started.elapsed());
        if enabled(Level::Debug) {
            debug(&format!(
                "{method} {route} {} ({} ms)",
                status.as_u16(),
                self.started.elapsed().as_millis()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    fn site() -> Router {
        let hosts = AllowedHosts::new(vec!["keys.example".to_string()]).expect("hosts");
        let routes = Router::new()
            .route("/front-door-test/{id}", get(|| async { "ok" }))
            .route("/healthz", get(|| async { "healthy" }));
        front_door(routes, Arc::new(hosts))
    }

    async fn send(router: Router, path: &str, host: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .uri(path)
            .header("host", host)
            .body(Body::empty())
            .expect("request");
        let Ok(response) = router.oneshot(request).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn counted(route: &str, status: &str) -> bool {
        let (_, text) = metrics::render().expect("render");
        let series = format!(
            "keygatectl_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"{status}\"}}"
        );
        text.lines().any(|line| line.starts_with(&series))
    }

    #[tokio::test]
    async fn allowed_hosts_pass_and_are_counted_by_route_template() {
        let (status, body) = send(site(), "/front-door-test/k_123", "keys.example:8080").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        assert!(counted("/front-door-test/{id}", "200"));
        assert!(
            !counted("/front-door-test/k_123", "200"),
            "never the path sent"
        );
    }

    #[tokio::test]
    async fn other_hosts_get_421_with_a_json_error_and_are_not_counted() {
        let (status, body) = send(site(), "/front-door-test/refused", "evil.example").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(body.contains("\"code\":\"host_not_allowed\""), "{body}");
        assert!(!counted("/front-door-test/{id}", "421"));
    }

    #[tokio::test]
    async fn health_paths_answer_whatever_the_host() {
        let (status, body) = send(site(), "/healthz", "my-pod.cluster").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "healthy"));
    }
}
