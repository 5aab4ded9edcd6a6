//! Readable names of the catalogue datasets' classes: Imagenette's and Imagewoof's folders are
//! ImageNet synset ids (`n01440764`), which tell a person nothing; fastai's imagenette
//! notebooks and README name them (`tench`). [`readable_name`] maps an id to its name and
//! [`display_name`] gives what outputs show: `tench (n01440764)` for a known id, and any
//! other folder name exactly as it is, in any script.

/// ImageNet's names of the ten Imagenette classes and the ten Imagewoof classes (the
/// ImageNet 2012 synset words, first synonym, as fastai's imagenette README lists them).
const SYNSET_NAMES: [(&str, &str); 20] = [
    // Imagenette.
    ("n01440764", "tench"),
    ("n02102040", "English springer"),
    ("n02979186", "cassette player"),
    ("n03000684", "chain saw"),
    ("n03028079", "church"),
    ("n03394916", "French horn"),
    ("n03417042", "garbage truck"),
    ("n03425413", "gas pump"),
    ("n03445777", "golf ball"),
    ("n03888257", "parachute"),
    // Imagewoof.
    ("n02086240", "Shih-Tzu"),
    ("n02087394", "Rhodesian ridgeback"),
    ("n02088364", "beagle"),
    ("n02089973", "English foxhound"),
    ("n02093754", "Border terrier"),
    ("n02096294", "Australian terrier"),
    ("n02099601", "golden retriever"),
    ("n02105641", "Old English sheepdog"),
    ("n02111889", "Samoyed"),
    ("n02115641", "dingo"),
];

/// The readable name of a catalogue class id, e.g. `n01440764` → `tench`.
pub fn readable_name(class: &str) -> Option<&'static str> {
    SYNSET_NAMES.iter().find(|(id, _)| *id == class).map(|(_, name)| *name)
}

/// What outputs show for a class folder: `tench (n01440764)` for a catalogue id, the folder
/// name itself otherwise (unchanged, whatever its script).
pub fn display_name(class: &str) -> String {
    match readable_name(class) {
        Some(name) => format!("{name} ({class})"),
        None => class.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_ids_get_their_names_and_other_folders_stay_as_they_are() {
        // fastai's imagenette README: "tench, English springer, cassette player, chain saw,
        // church, French horn, garbage truck, gas pump, golf ball, parachute".
        assert_eq!(display_name("n01440764"), "tench (n01440764)");
        assert_eq!(readable_name("n03425413"), Some("gas pump"));
        assert_eq!(readable_name("n03445777"), Some("golf ball"));
        // The ten folder names of imagenette2 (train/ and val/), each with a name.
        let imagenette = [
            "n01440764",
            "n02102040",
            "n02979186",
            "n03000684",
            "n03028079",
            "n03394916",
            "n03417042",
            "n03425413",
            "n03445777",
            "n03888257",
        ];
        assert!(imagenette.iter().all(|id| readable_name(id).is_some()));
        assert_eq!(readable_name("n03888257"), Some("parachute"));
        assert_eq!(display_name("chats_tigrés"), "chats_tigrés");
        assert_eq!(display_name("猫"), "猫");
        let ids: std::collections::BTreeSet<_> = SYNSET_NAMES.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), SYNSET_NAMES.len(), "each id once");
    }
}
