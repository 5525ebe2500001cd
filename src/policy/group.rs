//! `[auto-roots] keep-newest` and `group-by`: the newest N auto roots of
//! each group stay whatever their age, so the last few `result` links of
//! every CI repository survive a quiet month.
//!
//! A group is named by the outer link's path: either its folder
//! (`group-by = "folder"`), or what the `( )` captures of a pattern match
//! (`group-by = "/var/lib/gitea-runner/*/(*)/(*)/**"`: owner and
//! repository). In a pattern `*` and `?` stay within one path component,
//! `**` crosses `/`, and the pattern must match the whole link. A link the
//! pattern does not match is a group of its own (so it is among its
//! group's newest: kept), and the plan warns about it. Pure.

use std::collections::HashMap;

/// How auto roots are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// The outer link's folder.
    Folder,
    /// The `( )` captures of a pattern.
    Pattern(GroupPattern),
}

/// A parsed `group-by` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**`: any run of characters.
    Stars,
    Open,
    Close,
}

impl GroupBy {
    /// `"folder"`, or a pattern starting with `/` or `*` holding at least
    /// one `( )` capture, not nested.
    pub fn parse(text: &str) -> Result<GroupBy, String> {
        if text == "folder" {
            return Ok(GroupBy::Folder);
        }
        if !(text.starts_with('/') || text.starts_with('*')) {
            return Err(format!(
                "invalid group-by '{text}' (expected \"folder\" or a pattern on the link's path with ( ) captures)"
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        let (mut open, mut captures) = (false, 0);
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Token::Stars
                }
                '*' => Token::Star,
                '?' => Token::One,
                '(' if open => return Err(format!("invalid group-by '{text}' (nested '(')")),
                '(' => {
                    open = true;
                    Token::Open
                }
                ')' if !open => return Err(format!("invalid group-by '{text}' (')' without '(')")),
                ')' => {
                    open = false;
                    captures += 1;
                    Token::Close
                }
                c => Token::Lit(c),
            });
        }
        if open {
            return Err(format!("invalid group-by '{text}' (unclosed '(')"));
        }
        if captures == 0 {
            return Err(format!(
                "invalid group-by '{text}' (no ( ) capture: nothing names the group)"
            ));
        }
        Ok(GroupBy::Pattern(GroupPattern {
            text: text.to_string(),
            tokens,
        }))
    }

    pub fn as_str(&self) -> &str {
        match self {
            GroupBy::Folder => "folder",
            GroupBy::Pattern(p) => &p.text,
        }
    }

    /// The group of a link, `None` when a pattern does not match it.
    /// O(pattern × link) for usual patterns.
    pub fn key(&self, link: &str) -> Option<String> {
        match self {
            GroupBy::Folder => Some(match link.rfind('/') {
                Some(0) => "/".to_string(),
                Some(i) => link[..i].to_string(),
                None => String::new(),
            }),
            GroupBy::Pattern(p) => p.captures(link).map(|c| c.join("\u{0}")),
        }
    }
}

/// Whether `tokens` match all of `text`; `caps` gets the capture bounds
/// (start, end, start, end, ...). Backtracking, first match wins, `*` and
/// `**` greedy.
fn matches(tokens: &[Token], text: &[char], caps: &mut Vec<usize>) -> bool {
    let Some((&t, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    let at = |caps: &Vec<usize>| caps.len();
    match t {
        Token::Lit(c) => text.first() == Some(&c) && matches(rest, &text[1..], caps),
        Token::One => text.first().is_some_and(|&c| c != '/') && matches(rest, &text[1..], caps),
        Token::Star | Token::Stars => {
            let max = if t == Token::Stars {
                text.len()
            } else {
                text.iter().position(|&c| c == '/').unwrap_or(text.len())
            };
            (0..=max).rev().any(|n| {
                let mark = at(caps);
                let ok = matches(rest, &text[n..], caps);
                if !ok {
                    caps.truncate(mark);
                }
                ok
            })
        }
        Token::Open | Token::Close => {
            // Positions are counted from the end, fixed up by the caller.
            caps.push(text.len());
            let ok = matches(rest, text, caps);
            if !ok {
                caps.pop();
            }
            ok
        }
    }
}

/// For each root index, whether it is among the `keep` newest (by mtime,
/// then by link) distinct links of its group. `candidates` are `(root
/// index, link, mtime)` of the auto roots that could expire; a link found
/// twice counts once. Also returns the links no pattern matched, sorted.
/// O(c log c).
pub fn newest_per_group(
    candidates: &[(usize, &str, i64)],
    group_by: &GroupBy,
    keep: u32,
    roots: usize,
) -> (Vec<bool>, Vec<String>) {
    let mut groups: HashMap<String, Vec<(i64, &str)>> = HashMap::new();
    let mut unmatched = Vec::new();
    for &(_, link, mtime) in candidates {
        let key = group_by.key(link).unwrap_or_else(|| {
            unmatched.push(link.to_string());
            format!("\u{1}{link}")
        });
        groups.entry(key).or_default().push((mtime, link));
    }
    let mut kept_links: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for links in groups.values_mut() {
        links.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1)));
        links.dedup_by(|a, b| a.1 == b.1);
        kept_links.extend(links.iter().take(keep as usize).map(|l| l.1));
    }
    let mut kept = vec![false; roots];
    for &(i, link, _) in candidates {
        if i < roots && kept_links.contains(link) {
            kept[i] = true;
        }
    }
    unmatched.sort();
    unmatched.dedup();
    (kept, unmatched)
}

/// Turns capture positions counted from the text's end into offsets from
/// its start.
fn fix(caps: &mut [usize], len: usize) {
    for c in caps {
        *c = len - *c;
    }
}

impl GroupPattern {
    /// The captures of `link`, for tests and `policy check`.
    pub fn captures(&self, link: &str) -> Option<Vec<String>> {
        let text: Vec<char> = link.chars().collect();
        let mut caps = Vec::new();
        if !matches(&self.tokens, &text, &mut caps) {
            return None;
        }
        fix(&mut caps, text.len());
        Some(
            caps.chunks(2)
                .map(|c| text[c[0]..c[1]].iter().collect())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> GroupPattern {
        match GroupBy::parse(p).unwrap() {
            GroupBy::Pattern(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn captures_name_the_group() {
        let p = pattern("/var/lib/runner/*/(*)/(*)/**");
        assert_eq!(
            p.captures("/var/lib/runner/work/alice/web/job-1/result"),
            Some(vec!["alice".to_string(), "web".to_string()])
        );
        assert_eq!(p.captures("/var/lib/runner/work/alice/result"), None);
        let p = pattern("/ci/(**)/result*");
        assert_eq!(
            p.captures("/ci/a/b/result-dev"),
            Some(vec!["a/b".to_string()])
        );
        let g = GroupBy::parse("/ci/(*)/*").unwrap();
        assert_eq!(g.key("/ci/x/result"), Some("x".to_string()));
        assert_eq!(g.key("/ci/x/y/result"), None);
        assert_eq!(GroupBy::Folder.key("/ci/x/result"), Some("/ci/x".into()));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (p, why) in [
            ("relative/(x)", "expected \"folder\""),
            ("/a/*", "no ( ) capture"),
            ("/a/((*))", "nested"),
            ("/a/(*", "unclosed"),
            ("/a/*)", "without"),
        ] {
            let e = GroupBy::parse(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn the_newest_per_group_stay() {
        let c = [
            (0, "/ci/a/1/result", 10),
            (1, "/ci/a/2/result", 30),
            (2, "/ci/a/3/result", 20),
            (3, "/ci/b/1/result", 5),
            (4, "/elsewhere/result", 1),
            (5, "/ci/a/2/result", 30),
        ];
        let g = GroupBy::parse("/ci/(*)/**").unwrap();
        let (kept, unmatched) = newest_per_group(&c, &g, 2, 6);
        assert_eq!(kept, [false, true, true, true, true, true]);
        assert_eq!(unmatched, ["/elsewhere/result"]);
        let (kept, _) = newest_per_group(&c, &g, 0, 6);
        assert!(kept.iter().all(|k| !k));
        let (kept, unmatched) = newest_per_group(&c, &GroupBy::Folder, 1, 6);
        assert!(kept.iter().all(|k| *k));
        assert!(unmatched.is_empty());
    }
}
