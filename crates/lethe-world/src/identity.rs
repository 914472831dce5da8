//! The identities of the world: names, visual attributes and text facts.
//!
//! Invariants (tested): every identity has a unique two-word name; no name word is shared by
//! two identities; spare name words (for fictitious names) are used by no identity; any two
//! identities differ in at least three visual attributes.

use crate::rng::Rng;
use serde::Serialize;

pub const FIRST_NAMES: [&str; 24] = [
    "anna", "boris", "clara", "dmitri", "elena", "felix", "greta", "hugo", "irene", "jonas",
    "karin", "lukas", "maria", "nils", "olga", "pavel", "rosa", "sven", "tanja", "ugo", "vera",
    "walter", "xenia", "yuri",
];
pub const LAST_NAMES: [&str; 24] = [
    "adler",
    "berger",
    "castro",
    "dietz",
    "eklund",
    "fischer",
    "garcia",
    "hansen",
    "ivanov",
    "jensen",
    "keller",
    "lindqvist",
    "moreau",
    "novak",
    "ortega",
    "petrov",
    "quinn",
    "rossi",
    "schmidt",
    "torres",
    "ulrich",
    "vogel",
    "weber",
    "zimmer",
];
/// Name words no identity uses: material for fictitious names (SIU's T1 facet).
pub const SPARE_FIRST_NAMES: [&str; 8] = [
    "albin", "bettina", "cyril", "dora", "emil", "flora", "gustav", "hilde",
];
pub const SPARE_LAST_NAMES: [&str; 8] = [
    "amsel", "brandt", "crane", "dorn", "eber", "frost", "graf", "holm",
];

pub const FACE_SHAPES: [&str; 4] = ["round", "oval", "square", "long"];
pub const HAIR_COLOURS: [&str; 6] = ["black", "brown", "blonde", "red", "grey", "white"];
pub const HAIR_STYLES: [&str; 5] = ["short", "long", "bald", "curly", "mohawk"];
pub const SKIN_TONES: [&str; 4] = ["pale", "light", "tan", "dark"];
pub const EYE_COLOURS: [&str; 4] = ["blue", "green", "brown", "grey"];
pub const ACCESSORIES: [&str; 4] = ["glasses", "hat", "earring", "none"];
pub const PROFESSIONS: [&str; 12] = [
    "baker", "pilot", "doctor", "painter", "farmer", "lawyer", "teacher", "sailor", "chemist",
    "dancer", "miner", "tailor",
];
pub const CITIES: [&str; 12] = [
    "paris", "oslo", "lima", "cairo", "tokyo", "rome", "vienna", "dublin", "madrid", "prague",
    "lisbon", "quito",
];

/// Every attribute category with its possible values, in a fixed order.
pub const ATTRIBUTE_CATEGORIES: [(&str, &[&str]); 6] = [
    ("face", &FACE_SHAPES),
    ("hair_colour", &HAIR_COLOURS),
    ("hair_style", &HAIR_STYLES),
    ("skin", &SKIN_TONES),
    ("eyes", &EYE_COLOURS),
    ("accessory", &ACCESSORIES),
];

/// Visual attributes, as indices into the attribute lists above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attributes {
    pub face: &'static str,
    pub hair_colour: &'static str,
    pub hair_style: &'static str,
    pub skin: &'static str,
    pub eyes: &'static str,
    pub accessory: &'static str,
}

impl Attributes {
    fn values(&self) -> [&'static str; 6] {
        [
            self.face,
            self.hair_colour,
            self.hair_style,
            self.skin,
            self.eyes,
            self.accessory,
        ]
    }

    /// Number of attributes in which two identities differ.
    pub fn distance(&self, other: &Attributes) -> usize {
        self.values()
            .iter()
            .zip(other.values())
            .filter(|(a, b)| **a != *b)
            .count()
    }

    /// The attribute words of a description, e.g.
    /// `round face black short hair pale skin blue eyes glasses`.
    pub fn describe(&self) -> String {
        let hair = if self.hair_style == "bald" {
            "bald".to_string()
        } else {
            format!("{} {} hair", self.hair_colour, self.hair_style)
        };
        let acc = if self.accessory == "none" {
            "no accessory"
        } else {
            self.accessory
        };
        format!(
            "{} face {} {} skin {} eyes {}",
            self.face, hair, self.skin, self.eyes, acc
        )
    }
}

/// One person of the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub id: u32,
    pub first: &'static str,
    pub last: &'static str,
    pub attributes: Attributes,
    pub profession: &'static str,
    pub city: &'static str,
}

impl Identity {
    /// The two-word name, e.g. `anna adler`.
    pub fn name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    /// The text fact, e.g. `anna adler is a baker from paris`.
    pub fn fact(&self) -> String {
        format!(
            "{} is a {} from {}",
            self.name(),
            self.profession,
            self.city
        )
    }
}

/// The fixed set of identities. Built deterministically; the same on every machine.
pub fn identities() -> &'static [Identity] {
    static IDS: std::sync::OnceLock<Vec<Identity>> = std::sync::OnceLock::new();
    IDS.get_or_init(build)
}

/// Looks an identity up by numeric id.
pub fn identity(id: u32) -> Option<&'static Identity> {
    identities().get(id as usize)
}

/// Strangers in [`strangers`]; those with `index < TRAIN_STRANGERS` may be used for training,
/// the rest are held out (evaluation only).
pub const STRANGERS: usize = 400;
pub const TRAIN_STRANGERS: usize = 300;
/// Fewest attributes in which a stranger differs from every identity.
pub const STRANGER_MIN_DISTANCE: usize = 2;

/// Someone the model is never taught to name: a fixed attribute combination that differs
/// from every identity in at least [`STRANGER_MIN_DISTANCE`] attributes. The model learns to
/// answer "who is this?" about a stranger with a refusal; a forget makes the concept one more
/// stranger to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stranger {
    pub index: u32,
    pub attributes: Attributes,
}

impl Stranger {
    /// Key of the stranger's nuisance generator: never an identity's id.
    pub fn render_key(&self) -> u64 {
        1_000_000 + self.index as u64
    }
}

/// The fixed set of strangers, all attribute combinations distinct. Built deterministically.
pub fn strangers() -> &'static [Stranger] {
    static S: std::sync::OnceLock<Vec<Stranger>> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let mut rng = Rng::from_keys(&[54321]);
        let ids = identities();
        let mut out: Vec<Stranger> = Vec::new();
        while out.len() < STRANGERS {
            let cand = random_attributes(&mut rng);
            if ids
                .iter()
                .all(|i| i.attributes.distance(&cand) >= STRANGER_MIN_DISTANCE)
                && out.iter().all(|o| o.attributes != cand)
            {
                out.push(Stranger {
                    index: out.len() as u32,
                    attributes: cand,
                });
            }
        }
        out
    })
}

fn random_attributes(rng: &mut Rng) -> Attributes {
    let pick = |r: &mut Rng, list: &[&'static str]| list[r.below(list.len())];
    let hair_style = pick(rng, &HAIR_STYLES);
    let mut a = Attributes {
        face: pick(rng, &FACE_SHAPES),
        hair_colour: pick(rng, &HAIR_COLOURS),
        hair_style,
        skin: pick(rng, &SKIN_TONES),
        eyes: pick(rng, &EYE_COLOURS),
        accessory: pick(rng, &ACCESSORIES),
    };
    if hair_style == "bald" {
        // No hair is visible: the colour is nominal and fixed so it is not a hidden label.
        a.hair_colour = "grey";
    }
    a
}

/// Looks an identity up by its two-word name.
pub fn identity_by_name(name: &str) -> Option<&'static Identity> {
    let norm: Vec<&str> = name.split_whitespace().collect();
    identities().iter().find(|i| norm == [i.first, i.last])
}

fn build() -> Vec<Identity> {
    let mut rng = Rng::from_keys(&[12345]);
    let mut attrs: Vec<Attributes> = Vec::new();
    while attrs.len() < FIRST_NAMES.len() {
        let cand = random_attributes(&mut rng);
        if attrs.iter().all(|o| o.distance(&cand) >= 3) {
            attrs.push(cand);
        }
    }
    // Each profession and city is used by exactly two identities.
    let profs = shuffled(&mut rng, 2 * PROFESSIONS.len());
    let cities = shuffled(&mut rng, 2 * CITIES.len());
    attrs
        .into_iter()
        .enumerate()
        .map(|(i, a)| Identity {
            id: i as u32,
            first: FIRST_NAMES[i],
            last: LAST_NAMES[i],
            attributes: a,
            profession: PROFESSIONS[profs[i] % PROFESSIONS.len()],
            city: CITIES[cities[i] % CITIES.len()],
        })
        .collect()
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn there_are_at_least_24_identities_with_unique_name_words() {
        let ids = identities();
        assert!(ids.len() >= 24);
        let mut words = HashSet::new();
        for i in ids {
            assert!(words.insert(i.first), "{} reused", i.first);
            assert!(words.insert(i.last), "{} reused", i.last);
        }
        for w in SPARE_FIRST_NAMES.iter().chain(&SPARE_LAST_NAMES) {
            assert!(!words.contains(w), "spare name {w} is used by an identity");
        }
    }

    #[test]
    fn identities_differ_in_at_least_three_attributes() {
        let ids = identities();
        for a in ids {
            for b in ids.iter().filter(|b| b.id != a.id) {
                assert!(
                    a.attributes.distance(&b.attributes) >= 3,
                    "{} vs {}",
                    a.name(),
                    b.name()
                );
            }
        }
    }

    #[test]
    fn strangers_are_distinct_and_look_like_nobody_the_model_knows() {
        let s = strangers();
        assert_eq!(s.len(), STRANGERS);
        for (k, a) in s.iter().enumerate() {
            assert_eq!(a.index as usize, k);
            for i in identities() {
                assert!(
                    i.attributes.distance(&a.attributes) >= STRANGER_MIN_DISTANCE,
                    "stranger {k} is too close to {}",
                    i.name()
                );
            }
            assert!(s[..k].iter().all(|b| b.attributes != a.attributes));
            assert!(a.render_key() >= 1_000_000);
        }
    }

    #[test]
    fn lookup_by_name_and_id_agree() {
        let i = identity(5).unwrap();
        assert_eq!(identity_by_name(&i.name()), Some(i));
        assert_eq!(identity_by_name("  felix   fischer "), identity(5));
        assert!(identity_by_name("nobody here").is_none());
        assert!(identity(9999).is_none());
    }

    #[test]
    fn descriptions_and_facts_read_as_sentences() {
        let i = identity(0).unwrap();
        assert!(i.fact().starts_with("anna adler is a "));
        assert!(i.attributes.describe().contains(" face "));
    }
}
