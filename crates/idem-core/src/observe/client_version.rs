//! Client versions as a metric label: a bounded set, so a client that sends anything
//! in its version header cannot grow the number of series.

/// The label of a request that sent no version (or a value that is not text).
pub const NO_VERSION: &str = "none";

/// The label of a version outside the configured set.
pub const OTHER_VERSION: &str = "other";

/// The longest version kept; longer values are never in the set.
const MAX_VERSION_LEN: usize = 64;

/// The client versions that get a label of their own; every other value is
/// [`OTHER_VERSION`], a missing one [`NO_VERSION`].
///
/// ```
/// use idem_core::observe::ClientVersions;
///
/// let versions = ClientVersions::new(["ios/5.2", "android/5.2"]);
/// assert_eq!(versions.label(Some("ios/5.2")), "ios/5.2");
/// assert_eq!(versions.label(Some("ios/5.3-beta")), "other");
/// assert_eq!(versions.label(None), "none");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientVersions {
    known: Vec<String>,
}

impl ClientVersions {
    /// Versions that are labelled as themselves. Values longer than 64 bytes, empty
    /// ones and duplicates are left out.
    pub fn new<I, S>(versions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut known: Vec<String> = Vec::new();
        for version in versions {
            let version = version.into();
            let version = version.trim();
            if !version.is_empty()
                && version.len() <= MAX_VERSION_LEN
                && !known.iter().any(|k| k == version)
            {
                known.push(version.to_owned());
            }
        }
        ClientVersions { known }
    }

    /// The label of a request that sent `version` (the header's value, if any).
    pub fn label<'a>(&'a self, version: Option<&str>) -> &'a str {
        let Some(version) = version.map(str::trim).filter(|v| !v.is_empty()) else {
            return NO_VERSION;
        };
        self.known
            .iter()
            .find(|k| k.as_str() == version)
            .map_or(OTHER_VERSION, String::as_str)
    }

    /// How many label values the set can produce: its versions, `other` and `none`.
    pub fn cardinality(&self) -> usize {
        self.known.len() + 2
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_versions_keep_their_name_and_surrounding_blanks_do_not_count() {
        let versions = ClientVersions::new(["web/2026.11", " ios/5.2 "]);
        assert_eq!(versions.label(Some("web/2026.11")), "web/2026.11");
        assert_eq!(versions.label(Some(" ios/5.2")), "ios/5.2");
        assert_eq!(versions.label(Some("")), NO_VERSION);
        assert_eq!(versions.cardinality(), 4);
    }

    #[test]
    fn empty_overlong_and_repeated_versions_are_not_in_the_set() {
        let long = "v".repeat(MAX_VERSION_LEN + 1);
        let versions = ClientVersions::new(["", "a", "a", long.as_str()]);
        assert_eq!(versions.cardinality(), 3);
        assert_eq!(versions.label(Some(&long)), OTHER_VERSION);
    }

    proptest! {
        #[test]
        fn any_value_folds_into_the_bounded_set(value in ".{0,80}") {
            let versions = ClientVersions::new(["ios/5.2", "android/5.2"]);
            let label = versions.label(Some(&value));
            prop_assert!(["ios/5.2", "android/5.2", OTHER_VERSION, NO_VERSION].contains(&label));
        }
    }
}
