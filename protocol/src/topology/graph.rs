//! Dependency cycles in a graph of services. Pure; used by the file checks (which add
//! positions) and by the checks of topologies that arrive as data.

use std::collections::BTreeMap;

/// Every dependency cycle in the graph, each once, as the path that closes it
/// (`["a", "b", "a"]`), in depth-first order from `names`. `deps` lists a service's
/// dependencies. Self-edges are ignored: callers report a service that depends on
/// itself on its own.
pub(crate) fn dependency_cycles<'a>(
    names: impl IntoIterator<Item = &'a str>,
    deps: impl Fn(&str) -> Vec<&'a str>,
) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        deps: &dyn Fn(&str) -> Vec<&'a str>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        found: &mut Vec<Vec<String>>,
    ) {
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        for dep in deps(name) {
            if dep == name {
                continue;
            }
            match marks.get(dep) {
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|s| *s == dep).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push(dep.to_owned());
                    found.push(cycle);
                }
                Some(Mark::Done) => {}
                None => visit(dep, deps, marks, stack, found),
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for name in names {
        if !marks.contains_key(name) {
            visit(name, &deps, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&'static str, &[&'static str])]) -> Vec<Vec<String>> {
        let map: BTreeMap<&str, Vec<&str>> = edges.iter().map(|(n, d)| (*n, d.to_vec())).collect();
        dependency_cycles(map.keys().copied(), |n| {
            map.get(n).cloned().unwrap_or_default()
        })
    }

    #[test]
    fn cycles_are_found_once_and_self_edges_ignored() {
        assert_eq!(
            graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]),
            vec![vec!["a", "b", "c", "a"]]
        );
        assert!(graph(&[("a", &["a"]), ("b", &["a"])]).is_empty());
        assert!(graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]).is_empty());
    }
}
