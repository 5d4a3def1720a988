//! Debian version comparison (the dpkg algorithm: epoch, upstream, revision;
//! `~` sorts before everything, letters before non-letters).

use std::cmp::Ordering;

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
            (e.parse().unwrap_or(0), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// The upstream part of a Debian version: `7.2.13-1~bpo13+1` gives `7.2.13`.
pub(crate) fn upstream(v: &str) -> &str {
    split(v).1
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn cmp_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // non-digit prefix
        loop {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            i += 1;
            j += 1;
        }
        // digit run
        let sa = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sb = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let na = std::str::from_utf8(&a[sa..i])
            .unwrap_or("0")
            .trim_start_matches('0');
        let nb = std::str::from_utf8(&b[sb..j])
            .unwrap_or("0")
            .trim_start_matches('0');
        let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Compare two Debian versions like `dpkg --compare-versions`.
pub fn compare_debian_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| cmp_part(ua, ub))
        .then_with(|| cmp_part(ra, rb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_like_dpkg() {
        let lt = |a, b| assert_eq!(compare_debian_versions(a, b), Ordering::Less, "{a} < {b}");
        lt("6.12.94-1~bpo12+1", "6.12.94-1");
        lt("6.12.90-1~bpo12+1", "6.12.90-2~bpo12+1");
        lt("7.2.9-1", "7.2.13-1");
        lt("1.0~rc1-1", "1.0-1");
        lt("1.0-1", "1:0.1-1");
        lt("1.0a-1", "1.0+-1");
        lt("1.0", "1.0-0.1");
        assert_eq!(compare_debian_versions("1.01-1", "1.1-1"), Ordering::Equal);
        assert_eq!(upstream("6.1.170-3"), "6.1.170");
        assert_eq!(upstream("7.2.13-1~bpo13+1"), "7.2.13");
        assert_eq!(upstream("1:2.0-1-2"), "2.0-1");
    }
}
