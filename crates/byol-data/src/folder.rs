//! Folders of image files, as users download or make them.
//!
//! Layouts (as torchvision's `ImageFolder`):
//!
//! - labelled: the first level holds class folders (`root/n01440764/*.JPEG`,
//!   ImageNet's layout); the sorted folder names are the classes, label `i`
//!   for the `i`-th; images may sit at any depth inside their class folder;
//! - unlabelled: the first level holds only image files.
//!
//! When the root holds `train/` and `val/` (or `test/`), those are the
//! splits and the classes are `train/`'s; otherwise the whole root is the
//! training split and there is no test split.
//!
//! Only the relative paths are held in memory, in one string arena: about
//! the length of the paths plus 8 bytes per file (ImageNet's 1.28 million
//! training files take about 50 MB). Images are decoded on each call.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{ImageFormat, ImageReader};
use rayon::prelude::*;

use crate::{BadFile, DataError, Dataset, Format, Image, OnCorrupt, OpenOptions, Split};

/// Extensions (compared case-insensitively) of the files read as images:
/// torchvision's `IMG_EXTENSIONS` plus `pbm`/`pnm`. Other files are ignored.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "ppm", "pgm", "pbm", "pnm", "tif", "tiff", "webp",
];

/// The progress callback is called every this many pre-scanned files.
const PROGRESS_EVERY: usize = 1024;

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Hidden entries (`.DS_Store`, `.ipynb_checkpoints/`, ...) are not data.
fn is_hidden(name: &OsString) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// What a directory entry is, links followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    /// A link to nothing.
    Broken,
    /// Sockets, devices, ...
    Other,
}

struct Entry {
    name: OsString,
    path: PathBuf,
    kind: Kind,
}

/// The entries of `dir`, sorted by name (byte order on Unix).
fn list_dir(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let mut file_type = entry.file_type()?;
        let mut broken = false;
        if file_type.is_symlink() {
            match fs::metadata(&path) {
                Ok(meta) => file_type = meta.file_type(),
                Err(_) => broken = true,
            }
        }
        let kind = if broken {
            Kind::Broken
        } else if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        entries.push(Entry {
            name: entry.file_name(),
            path,
            kind,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The folder of a split: `root` itself, or `root/train` and `root/val` (or
/// `root/test`) when both exist.
fn split_root(root: &Path, split: Split) -> Result<(PathBuf, Option<PathBuf>), DataError> {
    let train = root.join("train");
    let test = ["val", "test"]
        .map(|n| root.join(n))
        .into_iter()
        .find(|p| p.is_dir());
    let layout = train.is_dir().then_some(()).and(test);
    match (split, layout) {
        (Split::Train, Some(_)) => Ok((train.clone(), Some(train))),
        (Split::Test, Some(test)) => Ok((test, Some(train))),
        (Split::Train, None) => Ok((root.to_path_buf(), None)),
        (Split::Test, None) => Err(DataError::NoSplit {
            path: root.to_path_buf(),
            split,
            reason: "an image folder has a test split only when it holds both train/ and \
                     val/ (or test/) subfolders; this one is all training data"
                .to_string(),
        }),
        (Split::Unlabeled | Split::TrainUnlabeled, _) => Err(DataError::UnsupportedSplit {
            path: root.to_path_buf(),
            format: Format::Folder,
            split,
        }),
    }
}

/// The image files found under a split's folder, before the pre-scan.
#[derive(Default)]
struct Walk {
    /// Relative paths, `/`-separated, one after the other.
    arena: String,
    /// End of each path in `arena`.
    ends: Vec<usize>,
    /// Class of each file, when labelled.
    labels: Vec<u32>,
    /// Files and folders that cannot be used.
    bad: Vec<BadFile>,
    /// Files ignored for their extension.
    ignored: usize,
    /// Canonical folders entered, against link loops.
    visited: HashSet<PathBuf>,
}

impl Walk {
    /// The full path of file `i`, under `dir`.
    fn path(&self, dir: &Path, i: usize) -> PathBuf {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        dir.join(&self.arena[start..self.ends[i]])
    }

    fn bad(&mut self, path: &Path, reason: impl Into<String>) {
        self.bad.push(BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        });
    }

    /// Visits `dir` (relative path `rel`) depth first, entries in name order,
    /// so paths come out sorted component by component.
    fn visit(&mut self, dir: &Path, rel: &str, label: Option<u32>) {
        match fs::canonicalize(dir) {
            Ok(canonical) => {
                if !self.visited.insert(canonical) {
                    tracing::warn!(dir = %dir.display(), "folder already visited (link loop?); not entered again");
                    return;
                }
            }
            Err(e) => return self.bad(dir, format!("cannot read folder: {e}")),
        }
        let entries = match list_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return self.bad(dir, format!("cannot read folder: {e}")),
        };
        for entry in entries {
            if is_hidden(&entry.name) {
                tracing::debug!(path = %entry.path.display(), "hidden entry ignored");
                continue;
            }
            let Some(name) = entry.name.to_str() else {
                if entry.kind == Kind::Dir || is_image(&entry.path) {
                    self.bad(&entry.path, "name is not valid UTF-8");
                }
                continue;
            };
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            match entry.kind {
                Kind::Dir => self.visit(&entry.path, &child, label),
                Kind::File | Kind::Broken if is_image(&entry.path) => {
                    if entry.kind == Kind::Broken {
                        self.bad(&entry.path, "link to a missing file");
                        continue;
                    }
                    self.arena.push_str(&child);
                    self.ends.push(self.arena.len());
                    if let Some(label) = label {
                        self.labels.push(label);
                    }
                }
                Kind::File | Kind::Broken | Kind::Other => self.ignored += 1,
            }
        }
    }
}

/// The first marker of a JPEG file (SOI, then the start of a segment).
const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// The end-of-image marker that closes every complete JPEG file.
const JPEG_EOI: [u8; 2] = [0xFF, 0xD9];

/// Where the first start-of-scan marker (FF DA) of the JPEG `bytes` is,
/// found by walking the segments from the start; `None` when the walk
/// cannot find one (the decoder then judges the file).
fn first_scan(bytes: &[u8]) -> Option<usize> {
    let mut pos = 2;
    loop {
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        if bytes.get(pos) != Some(&0xFF) {
            return None;
        }
        let marker = *bytes.get(pos + 1)?;
        match marker {
            0xDA => return Some(pos),
            0x01 | 0xD0..=0xD7 => pos += 2, // no length
            _ => {
                let len = u16::from_be_bytes([*bytes.get(pos + 2)?, *bytes.get(pos + 3)?]);
                pos += 2 + usize::from(len);
            }
        }
    }
}

/// Why the JPEG `bytes` are cut short, or `None` when they end with
/// their end-of-image marker after the image data (bytes after it, as
/// some cameras append, are allowed). The marker cannot occur inside
/// entropy-coded data (every FF byte there is followed by 00 or a restart
/// marker), so its last occurrence after the first scan marks the end.
fn jpeg_cut(bytes: &[u8]) -> Option<String> {
    if bytes.ends_with(&JPEG_EOI) {
        return None;
    }
    let scan = first_scan(bytes)?;
    let complete = bytes[scan..].windows(2).rev().any(|w| w == JPEG_EOI);
    (!complete).then(|| {
        format!(
            "truncated JPEG: {} bytes and no end-of-image marker (FF D9) after the image data",
            bytes.len()
        )
    })
}

/// For a JPEG file, why it is cut short ([`jpeg_cut`]); reads its first
/// and last bytes only, and the whole file when it does not end with the
/// end-of-image marker. Leaves `file` at its start.
fn jpeg_file_cut(file: &mut fs::File) -> std::io::Result<Option<String>> {
    let len = file.metadata()?.len();
    let mut head = [0u8; 3];
    let mut tail = [0u8; 2];
    let cut = if len < 5 || file.read_exact(&mut head).is_err() || head != JPEG_MAGIC {
        None
    } else {
        file.seek(SeekFrom::End(-2))?;
        file.read_exact(&mut tail)?;
        if tail == JPEG_EOI {
            None
        } else {
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut bytes)?;
            jpeg_cut(&bytes)
        }
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(cut)
}

/// A reader of `source` with the format its extension names (as
/// `ImageReader::open`), which the content's magic bytes then override.
fn reader_for<R: std::io::BufRead + Seek>(path: &Path, source: R) -> ImageReader<R> {
    let mut reader = ImageReader::new(source);
    if let Ok(format) = ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    reader
}

/// Checks that `path` opens as an image of a known format with non-zero
/// dimensions, reading only its header (and, for a JPEG, its last two
/// bytes: [`jpeg_file_cut`]). Returns the reason it is bad.
fn check_header(path: &Path) -> Result<(), String> {
    let mut file = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    if let Some(cut) = jpeg_file_cut(&mut file).map_err(|e| format!("cannot read: {e}"))? {
        return Err(cut);
    }
    let reader = reader_for(path, BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not a recognised image format".to_string());
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("image header does not decode: {e}"))?;
    if width == 0 || height == 0 {
        return Err(format!("empty image ({width}×{height})"));
    }
    Ok(())
}

/// Decodes `path` to RGB. A JPEG cut short is an error ([`jpeg_cut`]):
/// the decoder would fill the missing rows with grey and say nothing, where
/// PIL raises "image file is truncated".
fn decode_rgb(path: &Path) -> Result<Image, DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(&JPEG_MAGIC)
        && let Some(reason) = jpeg_cut(&bytes)
    {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            reason,
        });
    }
    let reader = reader_for(path, Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let decoded = reader.decode().map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let rgb = decoded.into_rgb8();
    let (width, height) = rgb.dimensions();
    Ok(Image {
        pixels: rgb.into_raw(),
        height: height as usize,
        width: width as usize,
        channels: 3,
    })
}

/// A folder of image files, decoded on demand and converted to RGB.
///
/// Samples are the image files (by [`IMAGE_EXTENSIONS`]) under the split's
/// folder, recursively, sorted by relative path compared component by
/// component, each component by bytes: so each class's images are
/// contiguous and classes come in label order. Hidden files and folders
/// (names starting with `.`) and files of other extensions are ignored.
/// Samples are named by their `/`-separated path relative to the split's
/// folder (`n01440764/n01440764_10026.JPEG`).
///
/// Every image is converted to 8-bit RGB, as torchvision's `ImageFolder`
/// does with PIL's `convert("RGB")`: grayscale is replicated into the three
/// channels, alpha is dropped (not composited), 16-bit samples are scaled to
/// 8 bits; EXIF orientation is not applied (PIL does not either).
#[derive(Debug, Clone)]
pub struct FolderDataset {
    /// The split's folder; sample paths are relative to it.
    root: PathBuf,
    arena: String,
    ends: Vec<usize>,
    /// First sample of each class, when labelled.
    class_starts: Option<Vec<usize>>,
    classes: Option<Vec<String>>,
    skipped: Vec<BadFile>,
}

/// The error of an I/O failure on `path`.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every candidate file of the split folder `dir`: in its class folders
/// (the classes of `class_source`, sorted) when `classes` is not empty,
/// else in the whole tree. Loose images beside class folders and folders
/// that are not classes are recorded as bad.
fn walk_split(dir: &Path, class_source: &Path, classes: &[String]) -> Result<Walk, DataError> {
    let mut walk = Walk::default();
    if classes.is_empty() {
        walk.visit(dir, "", None);
        return Ok(walk);
    }
    for entry in list_dir(dir).map_err(io_error(dir))? {
        if is_hidden(&entry.name) {
            continue;
        }
        match (entry.kind, entry.name.to_str()) {
            (Kind::Dir, Some(name)) => match classes.binary_search_by(|c| c.as_str().cmp(name)) {
                Ok(label) => {
                    let label = u32::try_from(label).expect("class count should fit in u32");
                    walk.visit(&entry.path, name, Some(label));
                }
                Err(_) => walk.bad(
                    &entry.path,
                    format!(
                        "class folder {name:?} is not a class of {}",
                        class_source.display()
                    ),
                ),
            },
            (Kind::Dir, None) => walk.bad(&entry.path, "class folder name is not valid UTF-8"),
            (_, _) if is_image(&entry.path) => walk.bad(
                &entry.path,
                "image outside any class folder (the first level holds class folders)",
            ),
            _ => walk.ignored += 1,
        }
    }
    Ok(walk)
}

/// The files of `walk` whose header does not decode, with the reason,
/// checked in parallel; progress is reported every [`PROGRESS_EVERY`]
/// files and at the end.
fn check_headers(walk: &Walk, dir: &Path, options: &OpenOptions<'_>) -> Vec<(usize, String)> {
    let total = walk.ends.len();
    let done = AtomicUsize::new(0);
    (0..total)
        .into_par_iter()
        .filter_map(|i| {
            let result = check_header(&walk.path(dir, i));
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(progress) = options.progress
                && (n.is_multiple_of(PROGRESS_EVERY) || n == total)
            {
                progress(n, total);
            }
            result.err().map(|reason| (i, reason))
        })
        .collect()
}

/// The files of `walk` but those in `drop`, as (arena, ends), and where
/// each of the `n_classes` classes starts among them (files come in
/// class order).
fn keep_good(
    walk: &Walk,
    drop: &HashSet<usize>,
    labelled: bool,
    n_classes: usize,
) -> (String, Vec<usize>, Vec<usize>) {
    let mut arena = String::with_capacity(walk.arena.len());
    let mut ends = Vec::with_capacity(walk.ends.len() - drop.len());
    let mut class_starts = vec![0usize; n_classes];
    let mut next_class = 0;
    let mut start = 0;
    for (i, &end) in walk.ends.iter().enumerate() {
        if !drop.contains(&i) {
            if labelled {
                let label = walk.labels[i] as usize;
                while next_class <= label {
                    class_starts[next_class] = ends.len();
                    next_class += 1;
                }
            }
            arena.push_str(&walk.arena[start..end]);
            ends.push(arena.len());
        }
        start = end;
    }
    for s in &mut class_starts[next_class..] {
        *s = ends.len();
    }
    (arena, ends, class_starts)
}

/// The class folders of `class_source`, sorted (none: unlabelled).
fn class_names(class_source: &Path) -> Result<Vec<String>, DataError> {
    Ok(list_dir(class_source)
        .map_err(io_error(class_source))?
        .into_iter()
        .filter(|e| e.kind == Kind::Dir && !is_hidden(&e.name))
        .filter_map(|e| e.name.to_str().map(str::to_string))
        .collect())
}

/// What a listing of one split of an image folder finds, without opening
/// any image: see [`FolderDataset::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderListing {
    /// Files with an image extension in the split (some may turn out bad
    /// when [`FolderDataset::open`] reads their headers).
    pub images: usize,
    /// Class folders (0: an unlabelled folder).
    pub classes: usize,
}

impl FolderDataset {
    /// Lists one split of the image folder `root` as [`FolderDataset::open`]
    /// does, without reading any file: the image count and classes that
    /// `open` would report before its header pre-scan (which opens every
    /// file: 1.28 million for ImageNet). For sizing a run.
    ///
    /// # Errors
    ///
    /// As [`FolderDataset::open`] for the folder itself: [`DataError::Io`],
    /// [`DataError::NoSplit`], [`DataError::UnsupportedSplit`].
    pub fn list(root: &Path, split: Split) -> Result<FolderListing, DataError> {
        let (dir, train) = split_root(root, split)?;
        let class_source = train.as_deref().unwrap_or(&dir);
        let classes = class_names(class_source)?;
        let walk = walk_split(&dir, class_source, &classes)?;
        Ok(FolderListing {
            images: walk.ends.len(),
            classes: classes.len(),
        })
    }

    /// Lists one split of the image folder `root` and pre-scans every file
    /// (format and dimensions from its header; no full decode), applying
    /// `options.on_corrupt` to the bad ones and reporting progress through
    /// `options.progress` (every 1024 files and at the end, possibly from
    /// several threads).
    ///
    /// Bad files are: image files whose header does not decode (a text file
    /// named `.jpg`, an empty or truncated-header file), unreadable files and
    /// folders, links to nothing, names that are not UTF-8, class folders of
    /// `val/` absent from `train/`, and image files next to class folders.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] when `root` cannot be listed,
    /// [`DataError::NoSplit`] / [`DataError::UnsupportedSplit`] for splits
    /// the folder does not have, [`DataError::CorruptFiles`] listing every bad
    /// file with [`OnCorrupt::Fail`] (and with [`OnCorrupt::Skip`] when
    /// every image is bad), and [`DataError::EmptyFolder`] when there is no
    /// image file at all.
    pub fn open(root: &Path, split: Split, options: &OpenOptions<'_>) -> Result<Self, DataError> {
        let (dir, train) = split_root(root, split)?;
        let class_source = train.as_deref().unwrap_or(&dir);
        let classes = class_names(class_source)?;
        let labelled = !classes.is_empty();
        let mut walk = walk_split(&dir, class_source, &classes)?;
        let mut bad = std::mem::take(&mut walk.bad);
        let found = check_headers(&walk, &dir, options);
        bad.extend(found.iter().map(|(i, reason)| BadFile {
            path: walk.path(&dir, *i),
            reason: reason.clone(),
        }));
        if !bad.is_empty() && options.on_corrupt == OnCorrupt::Fail {
            return Err(DataError::CorruptFiles { dir, files: bad });
        }
        for file in &bad {
            tracing::warn!(path = %file.path.display(), reason = %file.reason, "skipping bad file");
        }
        let drop: HashSet<usize> = found.iter().map(|(i, _)| *i).collect();
        let (arena, ends, class_starts) = keep_good(&walk, &drop, labelled, classes.len());
        if ends.is_empty() && !bad.is_empty() {
            // Skipping left nothing: say why rather than "no image found".
            return Err(DataError::CorruptFiles { dir, files: bad });
        }
        if ends.is_empty() {
            return Err(DataError::EmptyFolder {
                dir,
                extensions: IMAGE_EXTENSIONS.join(", "),
            });
        }
        tracing::info!(
            dir = %dir.display(),
            images = ends.len(),
            classes = classes.len(),
            skipped = bad.len(),
            ignored = walk.ignored,
            "opened image folder"
        );
        Ok(Self {
            root: dir,
            arena,
            ends,
            class_starts: labelled.then_some(class_starts),
            classes: labelled.then_some(classes),
            skipped: bad,
        })
    }

    /// The bad files dropped at open ([`OnCorrupt::Skip`]), in the order found.
    pub fn skipped(&self) -> &[BadFile] {
        &self.skipped
    }

    /// The split's folder, to which sample names are relative.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of sample `index`.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    pub fn path(&self, index: usize) -> PathBuf {
        self.root.join(self.relative(index))
    }

    fn relative(&self, index: usize) -> &str {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.arena[start..self.ends[index]]
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn channels(&self) -> usize {
        3
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        crate::check_index(&self.root.display().to_string(), index, self.len())?;
        decode_rgb(&self.path(index))
    }

    fn label(&self, index: usize) -> Option<u32> {
        assert!(
            index < self.len(),
            "image folder index {index} out of range"
        );
        let starts = self.class_starts.as_ref()?;
        let class = starts.partition_point(|&s| s <= index) - 1;
        Some(u32::try_from(class).expect("class count should fit in u32"))
    }

    fn num_classes(&self) -> Option<usize> {
        self.classes.as_ref().map(Vec::len)
    }

    fn class_names(&self) -> Option<Vec<String>> {
        self.classes.clone()
    }

    fn name(&self, index: usize) -> String {
        self.relative(index).to_string()
    }

    fn skipped_count(&self) -> usize {
        self.skipped.len()
    }
}
