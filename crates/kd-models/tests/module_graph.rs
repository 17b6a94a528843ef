//! The crate's modules depend on each other without cycles, and the weight reader knows no
//! architecture.
//!
//! A module's dependencies are the `crate::<module>` paths in its code (comments and the unit
//! tests at the bottom excluded).

use std::collections::BTreeMap;
use std::path::Path;

/// Module name → the modules its code names.
fn module_graph() -> BTreeMap<String, Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|m| m != "lib")
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let text = std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut deps: Vec<String> = Vec::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != *module && modules.contains(&name) && !deps.contains(&name) {
                    deps.push(name);
                }
            }
        }
        deps.sort();
        graph.insert(module.clone(), deps);
    }
    graph
}

#[test]
fn modules_form_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 10, "read the modules: {graph:?}");
    // Kahn's algorithm: repeatedly remove the modules whose dependencies are all removed.
    let mut left = graph.clone();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(!ready.is_empty(), "a dependency cycle among {left:?}");
        for m in ready {
            left.remove(&m);
        }
    }
}

#[test]
fn weight_reader_knows_no_architecture() {
    let graph = module_graph();
    let deps = &graph["weights"];
    for arch in ["gpt2", "llama", "mistral", "qwen2", "registry", "model", "config", "load"] {
        assert!(!deps.contains(&arch.to_string()), "weights depends on {arch}: {deps:?}");
    }
    assert!(graph["load"].contains(&"weights".to_string()));
}
