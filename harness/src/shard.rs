//! `--shard I/N`: one of N CI runners takes its share of a run, the same share every time.
//!
//! Work items are keyed by (scenario file or golden folder, pyspark version). The keys are sorted
//! and dealt round robin: shard I takes the keys whose rank is I-1 modulo N. Sorting makes the
//! split independent of the order paths were given in; dealing by rank (rather than by a hash of
//! the key) keeps the shards within one item of each other even for a handful of items, which a
//! hash does not. Every item lands in exactly one shard, so the shards' reports together are the
//! whole run (`fakejvm report merge` checks that).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Shard `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole run: what a run without `--shard` is.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// For each key (in the caller's order), whether this shard runs it.
    pub fn picks<K: Ord>(&self, keys: &[K]) -> Vec<bool> {
        let mut by_key: Vec<usize> = (0..keys.len()).collect();
        // Equal keys (the same file given twice) keep their order, so the split stays stable.
        by_key.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let mut picked = vec![false; keys.len()];
        for (rank, &i) in by_key.iter().enumerate() {
            picked[i] = rank % self.count == self.index - 1;
        }
        picked
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let wrong = |why: &str| format!("{s:?} is not a shard: {why} (e.g. 1/4: the first of 4)");
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| wrong("write it I/N, with 1 <= I <= N"))?;
        let number = |part: &str, what: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| wrong(&format!("{what} {part:?} is not a whole number")))
        };
        let (index, count) = (number(i, "I")?, number(n, "N")?);
        if count == 0 {
            return Err(wrong("N must be at least 1"));
        }
        if index == 0 || index > count {
            return Err(wrong(&format!("I must be between 1 and {count}")));
        }
        Ok(Shard { index, count })
    }
}

// In reports a shard is its text, "2/4".
impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shard, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_i_of_n_and_refuses_the_rest() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!("1/1".parse::<Shard>(), Ok(Shard::ALL));
        for bad in [
            "0/2", "3/2", "x", "1/0", "0/0", "1/x", "/2", "1/2/3", "-1/2", "",
        ] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && !e.contains('\n'), "{e}");
        }
        let s: Shard = serde_json::from_str("\"2/4\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"2/4\"");
        assert!(serde_json::from_str::<Shard>("\"5/4\"").is_err());
    }

    #[test]
    fn every_item_lands_in_exactly_one_shard_and_shards_are_even() {
        let keys: Vec<(String, String)> = (0..11)
            .rev()
            .map(|i| (format!("scenarios/s{i:02}.json"), "4.0.5".to_string()))
            .collect();
        for count in 1..=5 {
            let picks: Vec<Vec<bool>> = (1..=count)
                .map(|index| Shard { index, count }.picks(&keys))
                .collect();
            for item in 0..keys.len() {
                assert_eq!(picks.iter().filter(|p| p[item]).count(), 1);
            }
            let sizes: Vec<usize> = picks
                .iter()
                .map(|p| p.iter().filter(|&&x| x).count())
                .collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn the_split_does_not_depend_on_the_order_paths_were_given_in() {
        let a = vec!["c", "a", "d", "b", "e"];
        let mut b = a.clone();
        b.reverse();
        let shard = Shard { index: 2, count: 2 };
        let chosen = |keys: &[&'static str]| {
            let mut c: Vec<&str> = keys
                .iter()
                .zip(shard.picks(keys))
                .filter(|(_, p)| *p)
                .map(|(k, _)| *k)
                .collect();
            c.sort();
            c
        };
        assert_eq!(chosen(&a), vec!["b", "d"]);
        assert_eq!(chosen(&a), chosen(&b));
    }
}
