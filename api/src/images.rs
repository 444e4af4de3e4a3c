//! Pushed images as the API shows them.

use berth_protocol::image::Digest;
use serde::{Deserialize, Serialize};

/// `sha256:` digests, at most [`MOST_DIGESTS`] of them.
fn digest_list() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^sha256:[0-9a-f]{64}$")),
        )
        .max_items(Some(MOST_DIGESTS))
        .build()
}

/// The most digests one question about missing blobs may name.
pub const MOST_DIGESTS: usize = 1024;

/// `POST /v1/tenants/{tenant}/blobs/missing`: which of these blobs the tenant has not
/// pushed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlobsAsked {
    /// Digests, `sha256:…`.
    #[schema(schema_with = digest_list)]
    pub digests: Vec<Digest>,
}

/// The blobs, of those asked, that the tenant has not pushed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobsMissing {
    /// Digests, in the order asked.
    #[schema(value_type = Vec<String>)]
    pub missing: Vec<Digest>,
}

/// A blob was kept.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobStored {
    /// Its digest.
    #[schema(value_type = String)]
    pub digest: Digest,
    /// Its size, bytes.
    pub size: u64,
}

/// `POST /v1/tenants/{tenant}/images`: names an image whose blobs were pushed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImage {
    /// The reference topologies name it by, `name:tag`.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[a-z0-9][a-z0-9._/-]*(:[a-zA-Z0-9._-]+)?$"
    )]
    pub reference: String,
    /// Its config's digest: the image's id.
    #[schema(value_type = String, pattern = "^sha256:[0-9a-f]{64}$")]
    pub config: Digest,
}

/// One pushed image.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageView {
    /// `name:tag`.
    pub reference: String,
    /// The image's id (its config's digest): what nodes run.
    #[schema(value_type = String)]
    pub id: Digest,
    /// Its layers, in order.
    #[schema(value_type = Vec<String>)]
    pub layers: Vec<Digest>,
    /// Config and layers, bytes.
    pub size: u64,
    /// When it was pushed, Unix milliseconds.
    pub pushed_at_ms: i64,
}

/// A tenant's pushed images and the room they take.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageList {
    /// The images, by reference.
    pub images: Vec<ImageView>,
    /// Bytes the tenant keeps (each blob once).
    pub used_bytes: u64,
    /// Bytes it may keep.
    pub limit_bytes: u64,
}

/// The reference as it is kept: a name without a tag or digest means `:latest`, as
/// engines read it.
pub fn normalized(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || reference.contains('@') {
        reference.to_owned()
    } else {
        format!("{reference}:latest")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reference_without_a_tag_means_latest() {
        assert_eq!(super::normalized("app"), "app:latest");
        assert_eq!(super::normalized("app:1"), "app:1");
        assert_eq!(
            super::normalized("host:5000/team/app"),
            "host:5000/team/app:latest"
        );
        assert_eq!(
            super::normalized("host:5000/team/app:2"),
            "host:5000/team/app:2"
        );
    }
}
