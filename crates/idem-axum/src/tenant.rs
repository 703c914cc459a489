//! How the layer finds the tenant a request belongs to.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use idem_core::TenantId;

type ResolveFn = dyn Fn(&Parts) -> Option<TenantId> + Send + Sync;

/// Where the tenant of a request comes from. A key's identity is (tenant, key).
#[derive(Clone, Default)]
pub enum TenantSource {
    /// A [`TenantId`] request extension, inserted by the application's authentication
    /// middleware (which must run before the layer). The default.
    #[default]
    Extension,
    /// One tenant for every request: for single-tenant services.
    Fixed(TenantId),
    /// A function over the request's parts (headers, extensions, URI).
    Resolver(Arc<ResolveFn>),
}

impl TenantSource {
    /// One tenant for every request, [`TenantId::single`]: for single-tenant services.
    pub fn single() -> Self {
        TenantSource::Fixed(TenantId::single())
    }

    /// A source from a function over the request's parts.
    pub fn resolver<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<TenantId> + Send + Sync + 'static,
    {
        TenantSource::Resolver(Arc::new(f))
    }

    pub(crate) fn resolve(&self, parts: &Parts) -> Option<TenantId> {
        match self {
            TenantSource::Extension => parts.extensions.get::<TenantId>().cloned(),
            TenantSource::Fixed(t) => Some(t.clone()),
            TenantSource::Resolver(f) => f(parts),
        }
    }
}

impl fmt::Debug for TenantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantSource::Extension => f.write_str("Extension"),
            TenantSource::Fixed(t) => f.debug_tuple("Fixed").field(t).finish(),
            TenantSource::Resolver(_) => f.write_str("Resolver(..)"),
        }
    }
}
