//! A reader for the subset of the Containerfile (Dockerfile) syntax `deploy/Containerfile`
//! uses: comments, `\` line continuations, `FROM image [AS name]` stages and their instructions.

#[derive(Debug, thiserror::Error)]
pub enum ContainerfileError {
    #[error("line {line}: {instruction} before the first FROM")]
    BeforeFrom { line: usize, instruction: String },
    #[error("line {line}: FROM needs an image")]
    EmptyFrom { line: usize },
    #[error("line {line}: {keyword} is not in exec form (a JSON array of strings): {text}")]
    NotExecForm { line: usize, keyword: String, text: String },
}

/// One instruction: its keyword upper-cased, the rest of the (joined) line, and its first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
    pub line: usize,
}

/// One build stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub image: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    pub fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions.iter().filter(move |i| i.keyword == keyword)
    }

    /// The stage's last `keyword` instruction in exec form (what takes effect).
    pub fn exec_form(&self, keyword: &str) -> Result<Option<Vec<String>>, ContainerfileError> {
        let Some(last) = self.all(keyword).last() else {
            return Ok(None);
        };
        serde_json::from_str::<Vec<String>>(&last.args)
            .map(Some)
            .map_err(|_| ContainerfileError::NotExecForm {
                line: last.line,
                keyword: keyword.to_string(),
                text: last.args.clone(),
            })
    }
}

/// The file's global `ARG`s (before the first FROM) and its stages, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Containerfile {
    pub global_args: Vec<String>,
    pub stages: Vec<Stage>,
}

impl Containerfile {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }
}

pub fn parse(text: &str) -> Result<Containerfile, ContainerfileError> {
    let mut file = Containerfile::default();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = raw.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if pending.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((line_no, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            joined.push_str(body);
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(trimmed);
        add(&mut file, start, &joined)?;
    }
    if let Some((start, joined)) = pending {
        add(&mut file, start, &joined)?;
    }
    Ok(file)
}

fn add(file: &mut Containerfile, line: usize, text: &str) -> Result<(), ContainerfileError> {
    let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let keyword = keyword.to_ascii_uppercase();
    let args = args.trim().to_string();
    if keyword == "FROM" {
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let image = words.first().ok_or(ContainerfileError::EmptyFrom { line })?;
        let name = match words.as_slice() {
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
            _ => None,
        };
        file.stages.push(Stage {
            image: image.to_string(),
            name,
            instructions: Vec::new(),
        });
        return Ok(());
    }
    match file.stages.last_mut() {
        Some(stage) => stage.instructions.push(Instruction { keyword, args, line }),
        None if keyword == "ARG" => file.global_args.push(args),
        None => {
            return Err(ContainerfileError::BeforeFrom {
                line,
                instruction: keyword,
            });
        }
    }
    Ok(())
}
