//! A component for `ash:observe@0.2.0`, a version this host does not implement; the
//! hostile-plugin tests check that loading it fails and says why. Never deploy it.

wit_bindgen::generate!({
    path: "wit",
    world: "ash:observe/transformer@0.2.0",
});

struct WrongVersion;

impl exports::ash::observe::transform::Guest for WrongVersion {
    fn transform(data: String) -> Option<String> {
        Some(data)
    }
}

export!(WrongVersion);
