//! Topic patterns and the subscription trie: which subscribers want an auction's topic.
//!
//! - [`Pattern`]: a parsed subscription, an exact topic (`energy.eu.de.block-42`) or a
//!   pattern where a `*` segment matches exactly one segment and a final `>` segment matches
//!   one or more remaining segments (`energy.eu.*`, `energy.>`).
//! - [`PatternError`]: why a subscription text was refused (sent as `BAD_TOPIC`).
//! - [`TopicTrie`]: subscriptions in a prefix trie keyed by segment, so finding the
//!   subscribers of a topic walks at most the topic's depth (times the wildcard branches),
//!   never a scan of all subscriptions.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use gavel_engine::{NameError, Topic};
use thiserror::Error;

/// Why a topic or pattern was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum PatternError {
    /// Malformed as a topic would be (empty, too long, a bad character, an empty segment,
    /// too many segments); wildcards count as one character each.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A `>` segment that is not the last one.
    #[error("`>` is only allowed as the last segment")]
    RestNotLast,
    /// A wildcard in a field that takes exact topics only.
    #[error("wildcards are only allowed in patterns")]
    WildcardInTopic,
}

/// One segment of a [`Pattern`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Segment {
    /// Matches this exact segment.
    Literal(Box<str>),
    /// `*`: matches any one segment.
    One,
    /// `>`: matches one or more remaining segments; always last.
    Rest,
}

/// A parsed subscription: an exact topic or a pattern with `*` and a final `>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    segments: Box<[Segment]>,
}

impl Pattern {
    /// Longest pattern, in bytes (the same as a topic's).
    pub const LEN_MAX: usize = Topic::LEN_MAX;
    /// Most segments in a pattern (the same as a topic's).
    pub const SEGMENTS_MAX: usize = Topic::SEGMENTS_MAX;

    /// Parses a pattern; wildcards allowed.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        // A wildcard segment validates as a one-letter segment; the topic rules (length,
        // characters, segments) are the engine's, and the byte offsets stay the same.
        let as_topic: Vec<&str> = text
            .split('.')
            .map(|part| if matches!(part, "*" | ">") { "x" } else { part })
            .collect();
        Topic::new(&as_topic.join("."))?;
        let count = as_topic.len();
        let mut segments = Vec::with_capacity(count);
        for (index, part) in text.split('.').enumerate() {
            segments.push(match part {
                "*" => Segment::One,
                ">" if index + 1 == count => Segment::Rest,
                ">" => return Err(PatternError::RestNotLast),
                literal => Segment::Literal(literal.into()),
            });
        }
        Ok(Pattern {
            text: Arc::from(text),
            segments: segments.into_boxed_slice(),
        })
    }

    /// Parses an exact topic: like [`Pattern::parse`], but wildcards are refused.
    pub fn exact(text: &str) -> Result<Pattern, PatternError> {
        let pattern = Pattern::parse(text)?;
        if pattern.is_exact() {
            Ok(pattern)
        } else {
            Err(PatternError::WildcardInTopic)
        }
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no wildcard (it matches one topic only).
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Whether `topic` matches: the reference semantics, segment by segment (the trie
    /// answers the same for many patterns at once).
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in self.segments.iter() {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if parts.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.as_str())
    }
}

/// One node of the trie: the subscriptions ending here, and the branches below.
#[derive(Debug)]
struct Node<S> {
    /// Subscribers whose pattern ends exactly at this node.
    here: HashSet<S>,
    /// Subscribers whose pattern ends with `>` after this node.
    rest: HashSet<S>,
    /// Literal branches.
    children: HashMap<Box<str>, Node<S>>,
    /// The `*` branch.
    one: Option<Box<Node<S>>>,
}

impl<S> Default for Node<S> {
    fn default() -> Node<S> {
        Node {
            here: HashSet::new(),
            rest: HashSet::new(),
            children: HashMap::new(),
            one: None,
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.here.is_empty()
            && self.rest.is_empty()
            && self.children.is_empty()
            && self.one.is_none()
    }
}

/// Subscriptions keyed by pattern segment. `S` identifies a subscriber (a connection id).
///
/// The trie holds a (pattern, subscriber) pair at most once; its size is bounded by the
/// callers' per-connection subscription limit times their connection limit.
#[derive(Debug)]
pub struct TopicTrie<S> {
    root: Node<S>,
    len: usize,
}

impl<S> Default for TopicTrie<S> {
    fn default() -> TopicTrie<S> {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<S: Copy + Eq + Hash + Ord> TopicTrie<S> {
    /// An empty trie.
    pub fn new() -> TopicTrie<S> {
        TopicTrie::default()
    }

    /// (pattern, subscriber) pairs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `subscriber` under `pattern`; `false` if it was already there.
    pub fn insert(&mut self, pattern: &Pattern, subscriber: S) -> bool {
        let mut node = &mut self.root;
        for segment in pattern.segments.iter() {
            node = match segment {
                Segment::Literal(literal) => node.children.entry(literal.clone()).or_default(),
                Segment::One => node.one.get_or_insert_with(Box::default),
                Segment::Rest => {
                    let added = node.rest.insert(subscriber);
                    self.len += usize::from(added);
                    return added;
                }
            };
        }
        let added = node.here.insert(subscriber);
        self.len += usize::from(added);
        added
    }

    /// Removes `subscriber` from `pattern`; `false` if it was not there. Branches left
    /// empty are pruned, so the trie's memory follows its subscriptions.
    pub fn remove(&mut self, pattern: &Pattern, subscriber: S) -> bool {
        let removed = remove_below(&mut self.root, &pattern.segments, &subscriber);
        self.len -= usize::from(removed);
        removed
    }

    /// Calls `found` for each subscription matching `topic` (a subscriber holding several
    /// matching patterns is called once per pattern; see [`TopicTrie::subscribers`]).
    pub fn for_each_match(&self, topic: &str, mut found: impl FnMut(S)) {
        // A topic has at most Topic::SEGMENTS_MAX segments; collected on the stack.
        let mut parts: [&str; Topic::SEGMENTS_MAX] = [""; Topic::SEGMENTS_MAX];
        let mut depth = 0;
        for part in topic.split('.') {
            if depth == parts.len() {
                // Longer than any valid topic: nothing can have subscribed to it.
                return;
            }
            parts[depth] = part;
            depth += 1;
        }
        walk(&self.root, &parts[..depth], &mut found);
    }

    /// The distinct subscribers matching `topic`, sorted.
    pub fn subscribers(&self, topic: &str) -> Vec<S> {
        let mut out = Vec::new();
        self.for_each_match(topic, |s| out.push(s));
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn walk<S: Copy>(node: &Node<S>, parts: &[&str], found: &mut impl FnMut(S)) {
    let Some((first, below)) = parts.split_first() else {
        node.here.iter().copied().for_each(&mut *found);
        return;
    };
    // At least one segment remains, so every `>` ending here matches.
    node.rest.iter().copied().for_each(&mut *found);
    if let Some(child) = node.children.get(*first) {
        walk(child, below, found);
    }
    if let Some(one) = &node.one {
        walk(one, below, found);
    }
}

fn remove_below<S: Eq + Hash>(node: &mut Node<S>, segments: &[Segment], subscriber: &S) -> bool {
    let Some((first, below)) = segments.split_first() else {
        return node.here.remove(subscriber);
    };
    match first {
        Segment::Rest => node.rest.remove(subscriber),
        Segment::Literal(literal) => {
            let Some(child) = node.children.get_mut(literal) else {
                return false;
            };
            let removed = remove_below(child, below, subscriber);
            if child.is_empty() {
                node.children.remove(literal);
            }
            removed
        }
        Segment::One => {
            let Some(child) = node.one.as_deref_mut() else {
                return false;
            };
            let removed = remove_below(child, below, subscriber);
            if child.is_empty() {
                node.one = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_are_validated() {
        let name = |e| Err(PatternError::Name(e));
        assert_eq!(Pattern::parse(""), name(NameError::Empty));
        assert_eq!(Pattern::parse("a..b"), name(NameError::EmptySegment));
        assert_eq!(Pattern::parse(".a"), name(NameError::EmptySegment));
        assert_eq!(Pattern::parse("a."), name(NameError::EmptySegment));
        assert_eq!(Pattern::parse("a.>.b"), Err(PatternError::RestNotLast));
        assert_eq!(
            Pattern::parse("a.b*"),
            name(NameError::InvalidChar { at: 3 })
        );
        assert_eq!(
            Pattern::parse("a.>x"),
            name(NameError::InvalidChar { at: 2 })
        );
        assert_eq!(
            Pattern::parse("a b"),
            name(NameError::InvalidChar { at: 1 })
        );
        assert_eq!(
            Pattern::parse(&format!("{}a", "a.".repeat(16))),
            name(NameError::TooManySegments { segments_max: 16 })
        );
        assert_eq!(
            Pattern::parse(&"a".repeat(257)),
            name(NameError::TooLong { len_max: 256 })
        );
        assert_eq!(Pattern::exact("a.*"), Err(PatternError::WildcardInTopic));
        assert_eq!(Pattern::exact("a.>"), Err(PatternError::WildcardInTopic));
        assert!(Pattern::exact("energy.eu.de.block-42").unwrap().is_exact());
        assert!(Pattern::parse(">").is_ok());
        assert!(Pattern::parse("*.*").is_ok());
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(p("energy.eu.*").matches("energy.eu.de"));
        assert!(!p("energy.eu.*").matches("energy.eu"));
        assert!(!p("energy.eu.*").matches("energy.eu.de.block-42"));
        assert!(p("energy.>").matches("energy.eu"));
        assert!(p("energy.>").matches("energy.eu.de.block-42"));
        assert!(
            !p("energy.>").matches("energy"),
            "`>` needs at least one segment"
        );
        assert!(p(">").matches("a"));
        assert!(!p("energy.eu").matches("energy.eu.de"));
    }

    #[test]
    fn trie_finds_exact_and_wildcard_subscribers() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert(&p("energy.eu.de.block-42"), 1_u32));
        assert!(trie.insert(&p("energy.eu.*.block-42"), 2));
        assert!(trie.insert(&p("energy.>"), 3));
        assert!(trie.insert(&p("metals.>"), 4));
        assert!(
            trie.insert(&p("energy.eu.de.*"), 3),
            "same subscriber, second pattern"
        );
        assert!(!trie.insert(&p("energy.>"), 3), "held once");
        assert_eq!(trie.len(), 5);

        assert_eq!(trie.subscribers("energy.eu.de.block-42"), vec![1, 2, 3]);
        assert_eq!(trie.subscribers("energy.eu.fr.block-42"), vec![2, 3]);
        assert_eq!(trie.subscribers("energy"), Vec::<u32>::new());
        assert_eq!(trie.subscribers("metals.cu"), vec![4]);

        assert!(trie.remove(&p("energy.>"), 3));
        assert!(!trie.remove(&p("energy.>"), 3));
        assert!(
            !trie.remove(&p("energy.eu.*.block-42"), 9),
            "not subscribed"
        );
        assert_eq!(trie.subscribers("energy.eu.fr.block-42"), vec![2]);
        assert_eq!(trie.subscribers("energy.eu.de.x"), vec![3]);
        for (pattern, s) in [
            ("energy.eu.de.block-42", 1),
            ("energy.eu.*.block-42", 2),
            ("metals.>", 4),
            ("energy.eu.de.*", 3),
        ] {
            assert!(trie.remove(&p(pattern), s));
        }
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn a_topic_longer_than_any_valid_one_matches_nothing() {
        let mut trie = TopicTrie::new();
        trie.insert(&p(">"), 1_u8);
        let long = vec!["a"; Topic::SEGMENTS_MAX + 1].join(".");
        assert!(trie.subscribers(&long).is_empty());
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..5).prop_map(|s| s.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut segments, rest)| {
                if rest {
                    segments.push(">");
                }
                segments.join(".")
            })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(String, u8),
        Remove(String, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (pattern(), 0..6_u8).prop_map(|(p, s)| Op::Insert(p, s)),
            1 => (pattern(), 0..6_u8).prop_map(|(p, s)| Op::Remove(p, s)),
        ]
    }

    /// The naive reference: every held (pattern, subscriber) pair checked one by one.
    fn naive(held: &HashSet<(String, u8)>, topic: &str) -> Vec<u8> {
        let mut out: Vec<u8> = held
            .iter()
            .filter(|(pattern, _)| naive_match(pattern, topic))
            .map(|(_, s)| *s)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Matching written independently of [`Pattern::matches`], by recursion on text.
    fn naive_match(pattern: &str, topic: &str) -> bool {
        let pattern: Vec<&str> = pattern.split('.').collect();
        let topic: Vec<&str> = topic.split('.').collect();
        fn go(p: &[&str], t: &[&str]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(&">"), Some(_)) => true,
                (Some(&"*"), Some(_)) => go(&p[1..], &t[1..]),
                (Some(lit), Some(seg)) => lit == seg && go(&p[1..], &t[1..]),
                _ => false,
            }
        }
        go(&pattern, &topic)
    }

    proptest! {
        #[test]
        fn trie_agrees_with_the_naive_matcher(
            ops in prop::collection::vec(op(), 0..40),
            topics in prop::collection::vec(topic(), 1..10),
        ) {
            let mut trie = TopicTrie::new();
            let mut held = HashSet::new();
            for op in ops {
                match op {
                    Op::Insert(text, s) => {
                        let added = trie.insert(&p(&text), s);
                        prop_assert_eq!(added, held.insert((text, s)));
                    }
                    Op::Remove(text, s) => {
                        let removed = trie.remove(&p(&text), s);
                        prop_assert_eq!(removed, held.remove(&(text, s)));
                    }
                }
                prop_assert_eq!(trie.len(), held.len());
            }
            for topic in topics {
                prop_assert_eq!(trie.subscribers(&topic), naive(&held, &topic));
                for (pattern, _) in &held {
                    prop_assert_eq!(p(pattern).matches(&topic), naive_match(pattern, &topic));
                }
            }
        }
    }
}
