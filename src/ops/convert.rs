//! `rkms convert-config RKMS_CONFIG`: read an RKMS (Go) config.toml and
//! write the rkms config that serves the same table with the same keys, so
//! a deployment moves over with its table unchanged. Keys the converter
//! does not know are reported, never dropped silently; the output is
//! validated before it is printed.

use std::collections::BTreeMap;

use crate::config::Settings;

/// The converted config and the notes for the operator.
#[derive(Debug)]
pub struct Converted {
    pub toml: String,
    pub notes: Vec<String>,
}

pub fn convert(source_name: &str, text: &str) -> anyhow::Result<Converted> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // One line, with where: the message alone spans lines and says
        // nothing of the place.
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        anyhow::anyhow!(
            "{source_name}:{line}: not TOML: {}",
            e.message().trim_end().replace('\n', "; ")
        )
    })?;
    let mut used: Vec<String> = Vec::new();
    let mut notes = Vec::new();
    let get = |section: &str, key: &str, used: &mut Vec<String>| {
        let value = doc.get(section)?.as_table()?.get(key)?.clone();
        used.push(format!("{section}.{key}"));
        Some(value)
    };

    let port = match get("server", "port", &mut used) {
        Some(v) => Some(
            v.as_integer()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!("{source_name}: server.port is not a port number")
                })?,
        ),
        None => None,
    };
    let regions: Vec<String> = get("kms", "regions", &mut used)
        .ok_or_else(|| anyhow::anyhow!("{source_name}: kms.regions is missing"))?
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<String>>>()
        })
        .filter(|r: &Vec<String>| !r.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("{source_name}: kms.regions is not a list of region names")
        })?;
    // Said here, of the file given: a region name rkms would refuse comes
    // back otherwise as a fault in the converted text, which no one sees.
    if let Some(odd) = regions
        .iter()
        .find(|r| r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        anyhow::bail!(
            "{source_name}: kms.regions holds \"{}\", which is not a region name (empty, or with whitespace or control characters)",
            crate::config::printable(odd)
        );
    }
    let key_ids: BTreeMap<String, String> = match get("kms", "key_ids", &mut used) {
        Some(toml::Value::Array(ids)) => {
            if ids.len() != regions.len() {
                anyhow::bail!(
                    "{source_name}: kms.key_ids has {} entries for {} regions",
                    ids.len(),
                    regions.len()
                );
            }
            regions
                .iter()
                .zip(ids)
                .map(|(r, id)| {
                    id.as_str()
                        .map(|s| (r.clone(), s.to_string()))
                        .ok_or_else(|| {
                            anyhow::anyhow!("{source_name}: kms.key_ids holds a non-string")
                        })
                })
                .collect::<anyhow::Result<_>>()?
        }
        Some(toml::Value::Table(ids)) => ids
            .iter()
            .map(|(r, id)| {
                id.as_str()
                    .map(|s| (r.clone(), s.to_string()))
                    .ok_or_else(|| {
                        anyhow::anyhow!("{source_name}: kms.key_ids.{r} is not a string")
                    })
            })
            .collect::<anyhow::Result<_>>()?,
        _ => anyhow::bail!(
            "{source_name}: kms.key_ids is missing (a list parallel to kms.regions, or a table)"
        ),
    };
    let data_key_bytes = match get("kms", "data_key_size_in_bytes", &mut used) {
        Some(v) => Some(v.as_integer().ok_or_else(|| {
            anyhow::anyhow!("{source_name}: kms.data_key_size_in_bytes is not a number")
        })?),
        None => None,
    };
    let table = get("dynamodb", "table_name", &mut used)
        .ok_or_else(|| anyhow::anyhow!("{source_name}: dynamodb.table_name is missing"))?
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("{source_name}: dynamodb.table_name is not a string"))?;
    let table_region = match get("dynamodb", "region", &mut used) {
        Some(v) => v
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("{source_name}: dynamodb.region is not a string"))?,
        None => regions[0].clone(),
    };
    // The cache lifetime, in minutes, under whichever name it was given.
    let mut cache_minutes = None;
    for (section, value) in &doc {
        if let Some(t) = value.as_table() {
            for (key, v) in t {
                let name = format!("{section}.{key}");
                let about_cache = section.contains("cache") || key.contains("cache");
                if about_cache && key.contains("minute") && !used.contains(&name) {
                    let minutes = v.as_integer().filter(|m| *m >= 0).ok_or_else(|| {
                        anyhow::anyhow!("{source_name}: {name} is not a whole number of minutes")
                    })?;
                    if let Some((other, _)) = &cache_minutes {
                        anyhow::bail!("{source_name}: {other} and {name} both give the cache lifetime; keep one");
                    }
                    cache_minutes = Some((name.clone(), minutes));
                    used.push(name);
                }
            }
        }
    }
    for (section, value) in &doc {
        match value.as_table() {
            Some(t) => {
                for key in t.keys() {
                    let name = format!("{section}.{key}");
                    if !used.contains(&name) {
                        notes.push(format!(
                            "{name} has no rkms equivalent and was not converted"
                        ));
                    }
                }
            }
            None => notes.push(format!(
                "{section} has no rkms equivalent and was not converted"
            )),
        }
    }

    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = String::new();
    out.push_str(&format!(
        "# rkms config converted from the RKMS (Go) config {source_name}.\n"
    ));
    out.push_str("# Every key not written here takes its default (see rkms's config.toml).\n\n");
    out.push_str("[server]\n");
    let listen = format!("0.0.0.0:{}", port.unwrap_or(8080));
    out.push_str(&format!("listen = {}\n", quoted(&listen)));
    out.push_str("# RKMS (Go) served plain HTTP. Serve HTTPS ([server.tls] cert and key)\n# and remove this unless something else encrypts the traffic.\nallow_plaintext = true\n\n");
    if let Some(bytes) = data_key_bytes {
        out.push_str(&format!("[keys]\ndata_key_bytes = {bytes}\n\n"));
    }
    out.push_str("[kms]\nprovider = \"aws\"\n");
    out.push_str(&format!(
        "regions = [{}]\n",
        regions
            .iter()
            .map(|r| quoted(r))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(&format!(
        "# A new key is stored once wrapped in this many regions; the rest are\n# repaired in the background.\nmin_regions_on_create = {}\n\n",
        regions.len().min(2)
    ));
    out.push_str("[kms.aws.key_ids]\n");
    for (region, id) in &key_ids {
        out.push_str(&format!("{} = {}\n", quoted(region), quoted(id)));
    }
    out.push_str("\n[store]\nbackend = \"dynamodb\"\n\n[store.dynamodb]\n");
    out.push_str(&format!(
        "region = {}\ntable = {}\n",
        quoted(&table_region),
        quoted(&table)
    ));
    if let Some((name, minutes)) = cache_minutes {
        let seconds = minutes
            .checked_mul(60)
            .ok_or_else(|| anyhow::anyhow!("{source_name}: {name} = {minutes} is too large"))?;
        out.push_str(&format!("\n[cache]\nttl_seconds = {seconds}\n"));
    }
    out.push_str(
        "\n[auth]\n# RKMS (Go) had no authentication. This keeps that behaviour so the\n# move changes nothing for clients; switch to mode = \"token\" or \"mtls\"\n# with [[auth.clients]] as soon as the clients can send credentials.\nmode = \"none\"\nallow_unauthenticated = true\n",
    );
    notes.push("RKMS (Go) had no authentication: the converted config sets auth.allow_unauthenticated = true; plan the move to auth.mode = \"token\"".into());
    notes.push("RKMS (Go) served plain HTTP: the converted config sets server.allow_plaintext = true; add [server.tls] (cert and key) unless something else encrypts the traffic".into());
    Settings::from_toml(&out)
        .map_err(|e| anyhow::anyhow!("the converted config is not valid: {e}"))?;
    Ok(Converted { toml: out, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rkms_go_config_becomes_an_equivalent_valid_rkms_config() {
        let go = r#"
[server]
port = 9000

[kms]
regions = ["us-east-1", "us-west-2", "eu-west-1"]
key_ids = ["alias/rkms", "alias/rkms-west", "arn:aws:kms:eu-west-1:1:key/abc"]
data_key_size_in_bytes = 32

[dynamodb]
region = "us-east-1"
table_name = "rkms-keys"

[cache]
expiration_minutes = 10

[metrics]
statsd = "localhost:8125"
"#;
        let converted = convert("go.toml", go).unwrap();
        let s = Settings::from_toml(&converted.toml).unwrap();
        assert_eq!(s.server.listen.port(), 9000);
        assert_eq!(s.kms.regions, ["us-east-1", "us-west-2", "eu-west-1"]);
        assert_eq!(s.kms.aws.key_ids["us-west-2"], "alias/rkms-west");
        assert_eq!(
            s.kms.aws.key_ids["eu-west-1"],
            "arn:aws:kms:eu-west-1:1:key/abc"
        );
        assert_eq!(s.keys.data_key_bytes, 32);
        assert_eq!(s.store.dynamodb.table, "rkms-keys");
        assert_eq!(s.cache.ttl_seconds, 600);
        assert!(
            converted.notes.iter().any(|n| n.contains("metrics.statsd")),
            "{:?}",
            converted.notes
        );
    }

    #[test]
    fn a_config_it_cannot_convert_is_an_error_naming_the_key() {
        let err = convert("go.toml", "[kms]\nregions = [\"a\"]\n").unwrap_err();
        assert!(err.to_string().contains("kms.key_ids"), "{err}");
        let err = convert(
            "go.toml",
            "[kms]\nregions = [\"a\", \"b\"]\nkey_ids = [\"x\"]\n[dynamodb]\ntable_name = \"t\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("2 regions"), "{err}");
    }

    /// Values of the wrong type or range are errors naming the key, never
    /// dropped or wrapped around.
    #[test]
    fn odd_values_are_errors_not_dropped() {
        let base = "[kms]\nregions = [\"a\"]\nkey_ids = [\"x\"]\n[dynamodb]\ntable_name = \"t\"\n";
        for (extra, names) in [
            (
                "[cache]\nexpiration_minutes = \"10\"\n",
                "cache.expiration_minutes",
            ),
            (
                "[cache]\nexpiration_minutes = 2.5\n",
                "cache.expiration_minutes",
            ),
            (
                "[cache]\nexpiration_minutes = 1537228672809129302\n",
                "too large",
            ),
            (
                "[cache]\nexpiration_minutes = 1\nttl_minutes = 2\n",
                "keep one",
            ),
            ("[server]\nport = 0\n", "server.port"),
        ] {
            let err = convert("go.toml", &format!("{base}{extra}")).unwrap_err();
            assert!(err.to_string().contains(names), "{extra}: {err}");
        }
        let err = convert(
            "go.toml",
            "[kms]\nregions = [\"a\", 7]\nkey_ids = [\"x\", \"y\"]\n[dynamodb]\ntable_name = \"t\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("kms.regions"), "{err}");
        let err = convert("go.toml", &format!("{base}region = 5\n")).unwrap_err();
        assert!(err.to_string().contains("dynamodb.region"), "{err}");
    }
}
