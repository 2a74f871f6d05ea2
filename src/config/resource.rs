//! `protectedResource`: the service as an OAuth protected resource (RFC 9728), whose metadata
//! the filter serves itself and names in every 401 challenge.

use super::*;

/// RFC 9728 §3: the metadata of a resource lives under this well-known path, with the
/// resource's own path (if any) appended.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// One resource, or a list of them with `hosts` (a gateway serving several).
pub(super) fn parse_protected_resources(
    value: &Value,
    path: &At<'_>,
) -> Parsed<Vec<ProtectedResource>> {
    if !value.is_array() {
        return Ok(vec![parse_protected_resource(value, path)?]);
    }
    let resources = non_empty_items(value, path, parse_protected_resource)?;
    let defaults = resources.iter().filter(|r| r.hosts.is_none()).count();
    if defaults > 1 {
        return Err(error(
            path,
            "more than one resource without hosts: give each but one its hosts",
        ));
    }
    Ok(resources)
}

fn parse_protected_resource(value: &Value, path: &At<'_>) -> Parsed<ProtectedResource> {
    let resource = Object::new(
        value,
        path,
        &[
            "hosts",
            "resource",
            "authorizationServers",
            "scopesSupported",
            "resourceName",
            "resourceDocumentation",
        ],
    )?;
    let uri = resource.required("resource", non_empty_string)?;
    let (origin, resource_path) = split_resource(&uri).ok_or_else(|| {
        error(
            resource.path_of("resource"),
            "expected an absolute http(s) URI without query or fragment (RFC 9728 §2)",
        )
    })?;
    let documentation = resource.optional("resourceDocumentation", |value, path| {
        let url = non_empty_string(value, path)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(error(path, "expected an http(s) URL"));
        }
        Ok(url)
    })?;
    let path_inserted = format!("{METADATA_PATH}{resource_path}");
    Ok(ProtectedResource {
        metadata_url: format!("{origin}{path_inserted}"),
        metadata_paths: if resource_path.is_empty() {
            vec![METADATA_PATH.to_owned()]
        } else {
            // Clients look at the path-inserted URL first and fall back to the root one.
            vec![path_inserted, METADATA_PATH.to_owned()]
        },
        resource: uri,
        authorization_servers: resource
            .optional("authorizationServers", |value, path| {
                non_empty_items(value, path, non_empty_string)
            })?
            .unwrap_or_default(),
        scopes_supported: resource
            .optional("scopesSupported", |value, path| {
                items(value, path, parse_scope)
            })?
            .unwrap_or_default(),
        resource_name: resource.optional("resourceName", non_empty_string)?,
        resource_documentation: documentation,
        hosts: match_list(&resource, "hosts", parse_host_pattern)?,
    })
}

/// `https://h[:p]/path` → (`https://h[:p]`, `/path` without a trailing `/`, `""` for none).
fn split_resource(uri: &str) -> Option<(String, String)> {
    if uri.contains(['?', '#']) || !(uri.starts_with("https://") || uri.starts_with("http://")) {
        return None;
    }
    let after_scheme = uri.find("://")? + 3;
    let path_at = uri
        .get(after_scheme..)?
        .find('/')
        .map_or(uri.len(), |at| after_scheme + at);
    let origin = uri.get(..path_at)?;
    if origin.len() == after_scheme || origin.contains('@') {
        return None;
    }
    let path = uri.get(path_at..)?.trim_end_matches('/');
    Some((origin.to_owned(), path.to_owned()))
}
