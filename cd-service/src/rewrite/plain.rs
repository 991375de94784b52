//! Which plain (unquoted) scalars a YAML loader reads as something other than a string, under
//! the YAML 1.2 core schema (kustomize, Argo CD, Flux: go-yaml v3) *or* the YAML 1.1 types
//! (PyYAML, Helm's older paths, many linters): integers in every base and with leading zeros,
//! floats including `1e3` and `.5`, booleans in every 1.1 spelling, null, timestamps. A tag
//! written into a plain value that any of them would misread gets quotes. Pure: no I/O.

/// True when some YAML 1.1 or 1.2 loader reads the plain scalar `s` as anything but the string `s`.
pub fn misread(s: &str) -> bool {
    s.is_empty() || is_null(s) || is_bool(s) || is_int(s) || is_float(s) || is_timestamp(s)
}

fn is_null(s: &str) -> bool {
    matches!(s, "~" | "null" | "Null" | "NULL")
}

/// YAML 1.2's `true`/`false` and YAML 1.1's `y|yes|n|no|on|off` in their three spellings
/// (`yes`, `Yes`, `YES`); other mixed cases are strings to both, quoted anyway (harmless).
fn is_bool(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "y" | "yes" | "n" | "no" | "on" | "off")
}

fn unsigned(s: &str) -> &str {
    s.strip_prefix(['-', '+']).unwrap_or(s)
}

fn digits(s: &str, radix: u32, underscores: bool) -> bool {
    !s.is_empty() && s.chars().any(|c| c.is_digit(radix)) && s.chars().all(|c| c.is_digit(radix) || (underscores && c == '_'))
}

/// 1.2: `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`; 1.1 adds `_` separators, `0b…`, octal `0…`
/// and sexagesimal `1:30`. A leading zero (`012345678901`) is an integer to 1.2.
fn is_int(s: &str) -> bool {
    let u = unsigned(s);
    if !u.starts_with(|c: char| c.is_ascii_digit()) {
        return false;
    }
    if let Some(hex) = u.strip_prefix("0x").or_else(|| u.strip_prefix("0X")) {
        return digits(hex, 16, true);
    }
    if let Some(oct) = u.strip_prefix("0o") {
        return digits(oct, 8, true);
    }
    if let Some(bin) = u.strip_prefix("0b") {
        return digits(bin, 2, true);
    }
    if u.contains(':') {
        let mut parts = u.split(':');
        let head = parts.next().unwrap_or("");
        return digits(head, 10, true) && parts.all(|p| !p.is_empty() && p.len() <= 2 && digits(p, 10, false));
    }
    digits(u, 10, true)
}

/// 1.2: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, `.inf`, `.nan`; 1.1 adds `_`.
fn is_float(s: &str) -> bool {
    let u = unsigned(s);
    if matches!(u.to_ascii_lowercase().as_str(), ".inf" | ".nan") {
        return true;
    }
    let (mantissa, exponent) = match u.find(['e', 'E']) {
        Some(i) => (&u[..i], Some(&u[i + 1..])),
        None => (u, None),
    };
    if let Some(e) = exponent {
        if !digits(unsigned(e), 10, false) {
            return false;
        }
    }
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let int_ok = int.is_empty() || (int.starts_with(|c: char| c.is_ascii_digit()) && digits(int, 10, true));
    let frac_ok = frac.is_none_or(|f| f.is_empty() || digits(f, 10, true));
    let some_digit = mantissa.chars().any(|c| c.is_ascii_digit());
    // `1` alone is an int; a float needs a point or an exponent.
    int_ok && frac_ok && some_digit && (frac.is_some() || exponent.is_some())
}

/// YAML 1.1 timestamps: `YYYY-MM-DD`, optionally followed by a time.
fn is_timestamp(s: &str) -> bool {
    let date: Vec<&str> = s.splitn(3, '-').collect();
    if date.len() != 3 || date[0].len() != 4 || !digits(date[0], 10, false) || date[1].is_empty() || date[1].len() > 2 {
        return false;
    }
    let day: String = date[2].chars().take_while(char::is_ascii_digit).collect();
    let rest = &date[2][day.len()..];
    digits(date[1], 10, false) && !day.is_empty() && day.len() <= 2 && (rest.is_empty() || rest.starts_with(['t', 'T', ' ']))
}

#[cfg(test)]
mod tests {
    use super::misread;

    #[test]
    fn every_form_a_yaml_loader_reads_as_another_type() {
        for s in [
            // integers, leading zeros included (the outage: kustomize read 012345678901 as a number)
            "012345678901",
            "0",
            "42",
            "1_000",
            "0x1F",
            "0X1f",
            "0o17",
            "0b101",
            "017",
            "-1",
            "190:20:30",
            "1_",
            // floats
            "1.10",
            "1.",
            ".5",
            "1e3",
            "1E10",
            "1.5e-3",
            "6.8523015e+5",
            "1_000.5",
            ".inf",
            "-.INF",
            ".NaN",
            // booleans, every YAML 1.1 spelling
            "true",
            "True",
            "TRUE",
            "false",
            "y",
            "Y",
            "yes",
            "Yes",
            "YES",
            "n",
            "No",
            "on",
            "ON",
            "off",
            "Off",
            // null
            "null",
            "Null",
            "NULL",
            "~",
            "",
            // timestamps
            "2026-12-02",
            "2001-12-14t21",
            "2001-1-4",
        ] {
            assert!(misread(s), "{s:?} must be quoted");
        }
    }

    #[test]
    fn ordinary_tags_stay_plain() {
        for s in [
            "v1.2.3",
            "1.2.3",
            "3f2a9c1d0e4b",
            "abc123",
            "latest",
            "main-42",
            "1e",
            "e3",
            "0xZ",
            "1.2e",
            "release-2026-12-02",
            "2026-12-02-1",
            "_1",
            "_1.5",
            "v1",
            "0x",
            "1.0.0-rc.1",
            "nightly_2026",
            "12-34",
        ] {
            assert!(!misread(s), "{s:?} is a string to every loader");
        }
    }
}
