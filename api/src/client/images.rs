//! Calls on the image routes: import an archive, pull from a registry,
//! build from a Dockerfile, list, inspect, delete.

use super::stream::{BuildEvents, PullEvents};
use super::{decode, Client, ClientError, NO_BODY};
use crate::{BuildImageQuery, Image, ImageList, ImportImageQuery, PullImageRequest, NDJSON};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;

impl Client {
    /// `POST /v1/images/import`: uploads `archive` (`docker save` output
    /// or an OCI layout tar) as it is produced, and names the image `name`
    /// or as the archive does.
    pub async fn import_image<B>(
        &self,
        archive: B,
        name: Option<&str>,
    ) -> Result<Image, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let query = ImportImageQuery {
            name: name.map(str::to_owned),
        };
        let query = serde_urlencoded::to_string(&query).map_err(|err| ClientError::Unexpected {
            status: 0,
            text: format!("cannot encode the query: {err}"),
        })?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/images/import?{query}"))
            .header(header::CONTENT_TYPE, "application/x-tar")
            .body(archive)
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build the import request: {err}"),
            })?;
        let response = self.send_request(request).await?;
        decode(response, &self.endpoint.to_string()).await
    }

    /// `POST /v1/images/pull` with `Accept: application/x-ndjson`: each
    /// blob's progress as it arrives, then `done` or `error`.
    pub async fn pull_image(&self, request: &PullImageRequest) -> Result<PullEvents, ClientError> {
        let body = Bytes::from(serde_json::to_vec(request)?);
        let request = Request::post("/v1/images/pull")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, NDJSON)
            .body(Full::new(body))
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build the pull request: {err}"),
            })?;
        let response = self.send_request(request).await?;
        Ok(PullEvents::new(self.streaming(response).await?))
    }

    /// `POST /v1/images/build` with `Accept: application/x-ndjson`:
    /// uploads the build context tar `context` as it is produced; each
    /// step and its output as they happen, then `done` or `error`.
    pub async fn build_image<B>(
        &self,
        query: &BuildImageQuery,
        context: B,
    ) -> Result<BuildEvents, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let query = serde_urlencoded::to_string(query).map_err(|err| ClientError::Unexpected {
            status: 0,
            text: format!("cannot encode the query: {err}"),
        })?;
        let request = Request::post(format!("/v1/images/build?{query}"))
            .header(header::CONTENT_TYPE, "application/x-tar")
            .header(header::ACCEPT, NDJSON)
            .body(context)
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build the build request: {err}"),
            })?;
        let response = self.send_request(request).await?;
        Ok(BuildEvents::new(self.streaming(response).await?))
    }

    /// `GET /v1/images`
    pub async fn list_images(&self) -> Result<Vec<Image>, ClientError> {
        let list: ImageList = self.call(Method::GET, "/v1/images", NO_BODY).await?;
        Ok(list.images)
    }

    /// `GET /v1/images/{name}`
    pub async fn get_image(&self, name: &str) -> Result<Image, ClientError> {
        self.call(Method::GET, &image_path(name), NO_BODY).await
    }

    /// `DELETE /v1/images/{name}`
    pub async fn delete_image(&self, name: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &image_path(name), NO_BODY).await
    }
}

/// `/v1/images/{name}` with the name as one segment: its slashes (and
/// anything else a path segment cannot hold) percent-encoded, and the
/// first letter of a name that is a sibling route's (`import`, `pull`,
/// `build`).
fn image_path(name: &str) -> String {
    let mut path = String::from("/v1/images/");
    let sibling = matches!(name, "import" | "pull" | "build");
    for (at, byte) in name.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || b"-._~:@".contains(&byte);
        if plain && !(sibling && at == 0) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_names_are_one_path_segment() {
        assert_eq!(
            super::image_path("localhost:5000/team/app:v1"),
            "/v1/images/localhost:5000%2Fteam%2Fapp:v1"
        );
        assert_eq!(super::image_path("../x y"), "/v1/images/..%2Fx%20y");
        assert_eq!(super::image_path("pull"), "/v1/images/%70ull");
        assert_eq!(super::image_path("build"), "/v1/images/%62uild");
        assert_eq!(super::image_path("pull:v1"), "/v1/images/pull:v1");
    }
}
