//! JWS signature algorithms mesh-oauth accepts. `none` is deliberately absent:
//! an unsecured token can never name an algorithm we know.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

/// The family of key an algorithm needs; a JWK's `kty` (and curve) must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Oct,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// Exact, case-sensitive match as RFC 7515 requires (`rs256` is not `RS256`).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    pub fn key_family(self) -> KeyFamily {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyFamily::Rsa
            }
            Alg::ES256 => KeyFamily::EcP256,
            Alg::ES384 => KeyFamily::EcP384,
            Alg::EdDSA => KeyFamily::Ed25519,
            Alg::HS256 | Alg::HS384 | Alg::HS512 => KeyFamily::Oct,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A small set of algorithms (a provider's allow-list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    pub const EMPTY: AlgSet = AlgSet(0);

    pub fn all() -> AlgSet {
        Alg::ALL.into_iter().collect()
    }

    pub fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }

    pub fn insert(&mut self, alg: Alg) {
        self.0 |= alg.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |alg| self.contains(*alg))
    }
}

impl FromIterator<Alg> for AlgSet {
    fn from_iter<I: IntoIterator<Item = Alg>>(iter: I) -> Self {
        let mut set = AlgSet::EMPTY;
        for alg in iter {
            set.insert(alg);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Alg::from_name("rs256"), None);
        assert_eq!(Alg::from_name("none"), None);
        assert_eq!(Alg::from_name("ES512"), None);
    }

    #[test]
    fn alg_set_membership() {
        let set: AlgSet = [Alg::RS256, Alg::EdDSA].into_iter().collect();
        assert!(set.contains(Alg::RS256));
        assert!(set.contains(Alg::EdDSA));
        assert!(!set.contains(Alg::HS256));
        assert_eq!(set.iter().count(), 2);
        assert!(AlgSet::all().iter().eq(Alg::ALL));
    }
}
