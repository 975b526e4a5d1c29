//! `[ca.preauthorization]`: which SPCs the broker pre-authorizes at a CA whose directory
//! offers `newAuthz` ([RFC 8555 §7.4.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.1)),
//! so that a cache miss for one of them needs only newOrder and finalize.

use serde::{Deserialize, Serialize};

/// `[ca.preauthorization]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreauthSettings {
    /// Pre-authorize where the CA's directory offers `newAuthz`; default true. False turns
    /// it off for this CA (for a CA that charges per authorization, say). A CA without
    /// `newAuthz` is left alone either way.
    pub enabled: bool,
    /// The SPCs to pre-authorize (each a TNAuthList of that one SPC, end-entity tokens) at
    /// start-up and again whenever the SPC token is refreshed or the authorization nears
    /// its `expires`. Empty (the default): nothing is pre-authorized.
    pub spcs: Vec<String>,
}

impl Default for PreauthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            spcs: vec![],
        }
    }
}

impl PreauthSettings {
    /// Checks the SPCs (what [`crate::shaken::TnAuthList::from_spc`] accepts, no repeats);
    /// the error is the reason, for the `spcs` key.
    pub(super) fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for spc in &self.spcs {
            crate::shaken::TnAuthList::from_spc(spc).map_err(|e| format!("{spc:?}: {e}"))?;
            if !seen.insert(spc.as_str()) {
                return Err(format!("{spc:?} is listed twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    fn readme_preauthorization_example_loads() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme
            .find("### Pre-authorization (newAuthz)")
            .expect("pre-authorization section")..];
        let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("block end")];
        let s = Settings::from_toml(text).unwrap();
        let p = &s.ca[0].preauthorization;
        assert!(p.enabled, "on by default");
        assert_eq!(p.spcs, ["1234", "567J"]);
    }
}
