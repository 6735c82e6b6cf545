//! The corpus of real domain definitions (`tests/corpus/` in the repository, or
//! `$HBM_CORPUS_DIR`). Missing corpus = loud failure, never an empty (passing) loop.

use std::path::PathBuf;

/// One corpus definition, read whole.
#[derive(Clone, Debug)]
pub struct CorpusFile {
    /// `libvirt/NAME.xml` or `kubevirt/NAME.xml`.
    pub name: String,
    pub path: PathBuf,
    pub text: String,
}

pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("HBM_CORPUS_DIR") {
        Some(d) => PathBuf::from(d),
        None => super::repo_root().join("tests/corpus"),
    }
}

fn xml_files(sub: &str) -> Vec<CorpusFile> {
    let dir = corpus_dir().join(sub);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "corpus folder {} unreadable ({e}): the corpus ships in the repository \
             (tests/corpus) or be named by $HBM_CORPUS_DIR",
            dir.display()
        )
    });
    let mut out: Vec<CorpusFile> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            CorpusFile {
                name: format!("{sub}/{file}"),
                path,
                text,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!out.is_empty(), "no *.xml files in corpus folder {}", dir.display());
    out
}

/// libvirt's own test inputs (`libvirt/*.xml`).
pub fn libvirt_files() -> Vec<CorpusFile> {
    xml_files("libvirt")
}

/// KubeVirt-generated definitions (`kubevirt/*.xml`).
pub fn kubevirt_files() -> Vec<CorpusFile> {
    xml_files("kubevirt")
}

/// Every domain definition of the corpus, libvirt's first, each folder sorted by name.
pub fn domain_files() -> Vec<CorpusFile> {
    let mut v = libvirt_files();
    v.extend(kubevirt_files());
    v
}

/// One named corpus file (`kubevirt/gpu1.rendered.xml`).
pub fn file(name: &str) -> CorpusFile {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read corpus file {}: {e}", path.display()));
    CorpusFile {
        name: name.to_string(),
        path,
        text,
    }
}
