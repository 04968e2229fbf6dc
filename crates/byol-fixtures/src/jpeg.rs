//! A small JPEG writer for the variants the `image` crate cannot write:
//! progressive (SOF2) and CMYK (four components with Adobe's APP14
//! marker), beside baseline greyscale and YCbCr, each optionally with an
//! EXIF orientation tag.
//!
//! The format is ITU-T T.81 (ISO/IEC 10918-1): the quantisation tables of
//! its Annex K.1/K.2 scaled by quality as libjpeg scales them, the typical
//! Huffman tables of Annex K.3, one 8×8 block per component per MCU (no
//! chroma subsampling), a float DCT. A progressive file has a DC scan of
//! every component and then two spectral bands of AC coefficients
//! (1–5 and 6–63) per component, without successive approximation; its
//! end-of-band runs are always 1 (symbol 0x00), the one run Annex K's AC
//! tables hold a code for. Written to make test data, not small files.

use crate::FixtureError;

/// Pixels to encode, interleaved, row by row.
#[derive(Debug, Clone, Copy)]
pub enum Pixels<'a> {
    /// One 8-bit sample per pixel.
    Gray(&'a [u8]),
    /// Red, green, blue per pixel; stored as YCbCr (JFIF).
    Rgb(&'a [u8]),
    /// Cyan, magenta, yellow, black ink per pixel (0 = no ink); stored
    /// inverted, as Adobe Photoshop writes CMYK JPEGs, with an APP14
    /// marker saying "no colour transform".
    Cmyk(&'a [u8]),
}

impl Pixels<'_> {
    fn components(&self) -> usize {
        match self {
            Pixels::Gray(_) => 1,
            Pixels::Rgb(_) => 3,
            Pixels::Cmyk(_) => 4,
        }
    }

    fn samples(&self) -> &[u8] {
        match self {
            Pixels::Gray(s) | Pixels::Rgb(s) | Pixels::Cmyk(s) => s,
        }
    }
}

/// How [`encode`] writes the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegOptions {
    /// 1–100, as libjpeg's `-quality`.
    pub quality: u8,
    /// Progressive (SOF2) instead of baseline (SOF0).
    pub progressive: bool,
    /// An EXIF APP1 segment with this orientation tag (1–8; 6 = "rotate
    /// 90° clockwise to display").
    pub exif_orientation: Option<u16>,
}

impl Default for JpegOptions {
    fn default() -> Self {
        Self {
            quality: 90,
            progressive: false,
            exif_orientation: None,
        }
    }
}

// Annex K.1 and K.2, in natural (row-major) order.
#[rustfmt::skip]
const LUMA_Q: [u8; 64] = [
    16, 11, 10, 16,  24,  40,  51,  61,
    12, 12, 14, 19,  26,  58,  60,  55,
    14, 13, 16, 24,  40,  57,  69,  56,
    14, 17, 22, 29,  51,  87,  80,  62,
    18, 22, 37, 56,  68, 109, 103,  77,
    24, 35, 55, 64,  81, 104, 113,  92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103,  99,
];
#[rustfmt::skip]
const CHROMA_Q: [u8; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
];

/// Natural index of the `k`-th coefficient in zig-zag order (Figure A.6).
#[rustfmt::skip]
const ZIGZAG: [usize; 64] = [
     0,  1,  8, 16,  9,  2,  3, 10, 17, 24, 32, 25, 18, 11,  4,  5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,  6,  7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

// Annex K.3: code counts per length (BITS) and symbols (HUFFVAL).
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
#[rustfmt::skip]
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
#[rustfmt::skip]
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

/// A Huffman table: (code, length) of each symbol (Annex C).
struct Huffman {
    codes: [(u16, u8); 256],
}

impl Huffman {
    fn new(bits: &[u8; 16], values: &[u8]) -> Self {
        let mut codes = [(0u16, 0u8); 256];
        let mut code = 0u16;
        let mut k = 0;
        for (i, &count) in bits.iter().enumerate() {
            for _ in 0..count {
                codes[values[k] as usize] = (code, i as u8 + 1);
                code += 1;
                k += 1;
            }
            code <<= 1;
        }
        Self { codes }
    }
}

/// Entropy-coded bits, with 0xFF bytes stuffed (F.1.2.3).
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u8,
}

impl Bits {
    fn put(&mut self, value: u16, len: u8) {
        if len == 0 {
            return;
        }
        self.acc = (self.acc << len) | (u32::from(value) & ((1 << len) - 1));
        self.n += len;
        while self.n >= 8 {
            let byte = (self.acc >> (self.n - 8)) as u8;
            self.out.push(byte);
            if byte == 0xFF {
                self.out.push(0);
            }
            self.n -= 8;
        }
    }

    fn symbol(&mut self, table: &Huffman, symbol: u8) {
        let (code, len) = table.codes[symbol as usize];
        debug_assert!(len > 0, "symbol {symbol:#x} should have a code");
        self.put(code, len);
    }

    /// Pads the last byte with 1 bits and returns the scan's bytes.
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.put((1 << pad) - 1, pad);
        }
        self.out
    }
}

/// Magnitude category of `v` and its additional bits (F.1.2.1).
fn category(v: i32) -> (u8, u16) {
    let size = (32 - v.unsigned_abs().leading_zeros()) as u8;
    // negative values are sent as v − 1 in `size` bits (one's complement)
    let bits = if v < 0 { v - 1 } else { v };
    (size, (bits as u16) & ((1u16 << size) - 1))
}

/// Coefficients of every block of one component, in zig-zag order.
struct Plane {
    blocks: Vec<[i32; 64]>,
}

/// The 8×8 forward DCT basis, `C(u)/2 · cos((2x+1)uπ/16)`.
fn dct_basis() -> [[f32; 8]; 8] {
    let mut m = [[0f32; 8]; 8];
    for (u, row) in m.iter_mut().enumerate() {
        let c = if u == 0 {
            std::f32::consts::FRAC_1_SQRT_2
        } else {
            1.0
        };
        for (x, v) in row.iter_mut().enumerate() {
            let angle = (2 * x + 1) as f32 * u as f32 * std::f32::consts::PI / 16.0;
            *v = c / 2.0 * angle.cos();
        }
    }
    m
}

/// Quantised DCT of every 8×8 block of `samples` (`width × height`,
/// edges replicated), with `q` in natural order.
fn transform(samples: &[f32], width: usize, height: usize, q: &[u8; 64]) -> Plane {
    let basis = dct_basis();
    let (bw, bh) = (width.div_ceil(8), height.div_ceil(8));
    let mut blocks = Vec::with_capacity(bw * bh);
    for by in 0..bh {
        for bx in 0..bw {
            let mut f = [[0f32; 8]; 8];
            for (y, row) in f.iter_mut().enumerate() {
                let sy = (by * 8 + y).min(height - 1);
                for (x, v) in row.iter_mut().enumerate() {
                    let sx = (bx * 8 + x).min(width - 1);
                    *v = samples[sy * width + sx] - 128.0;
                }
            }
            // rows then columns: t = f·Mᵀ, F = M·t
            let mut t = [[0f32; 8]; 8];
            for y in 0..8 {
                for u in 0..8 {
                    t[y][u] = (0..8).map(|x| f[y][x] * basis[u][x]).sum();
                }
            }
            let mut block = [0i32; 64];
            for (k, &natural) in ZIGZAG.iter().enumerate() {
                let (v, u) = (natural / 8, natural % 8);
                let coef: f32 = (0..8).map(|y| basis[v][y] * t[y][u]).sum();
                block[k] = (coef / f32::from(q[natural])).round() as i32;
            }
            blocks.push(block);
        }
    }
    Plane { blocks }
}

/// `base` scaled by `quality` as libjpeg's `jpeg_quality_scaling`.
fn scaled(base: &[u8; 64], quality: u8) -> [u8; 64] {
    let quality = u32::from(quality.clamp(1, 100));
    let scale = if quality < 50 {
        5000 / quality
    } else {
        200 - 2 * quality
    };
    base.map(|b| ((u32::from(b) * scale + 50) / 100).clamp(1, 255) as u8)
}

/// The planes of `pixels` as the file stores them (YCbCr for RGB,
/// inverted ink for CMYK), as floats.
fn planes(pixels: &Pixels<'_>, n: usize) -> Vec<Vec<f32>> {
    let s = pixels.samples();
    match pixels {
        Pixels::Gray(_) => vec![s.iter().map(|&v| f32::from(v)).collect()],
        Pixels::Rgb(_) => {
            let mut out: Vec<Vec<f32>> = (0..3).map(|_| Vec::with_capacity(n)).collect();
            for p in s.chunks_exact(3) {
                let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
                out[0].push(0.299 * r + 0.587 * g + 0.114 * b);
                out[1].push(-0.168_736 * r - 0.331_264 * g + 0.5 * b + 128.0);
                out[2].push(0.5 * r - 0.418_688 * g - 0.081_312 * b + 128.0);
            }
            out
        }
        Pixels::Cmyk(_) => (0..4)
            .map(|c| s.chunks_exact(4).map(|p| 255.0 - f32::from(p[c])).collect())
            .collect(),
    }
}

fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An EXIF APP1 payload holding only the orientation tag (0x0112).
fn exif(orientation: u16) -> Vec<u8> {
    let mut p = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    p.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    p.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]); // SHORT × 1
    p.extend_from_slice(&orientation.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, no next IFD
    p
}

/// Whether component `c` uses the chrominance tables (table 1).
fn chroma(pixels: &Pixels<'_>, c: usize) -> bool {
    matches!(pixels, Pixels::Rgb(_)) && c > 0
}

/// The markers before the first scan: SOI, APPn, DQT, SOFn, DHT.
fn header(pixels: &Pixels<'_>, w: u16, h: u16, options: &JpegOptions) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    match pixels {
        Pixels::Cmyk(_) => segment(&mut out, 0xEE, b"Adobe\0\x64\0\0\0\0\0"),
        _ => segment(&mut out, 0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
    }
    if let Some(o) = options.exif_orientation {
        segment(&mut out, 0xE1, &exif(o));
    }
    let mut dqt = Vec::new();
    for (id, base) in [(0u8, &LUMA_Q), (1, &CHROMA_Q)] {
        let q = scaled(base, options.quality);
        dqt.push(id);
        dqt.extend(ZIGZAG.iter().map(|&n| q[n]));
    }
    segment(&mut out, 0xDB, &dqt);
    let n = pixels.components();
    let mut sof = vec![8];
    sof.extend_from_slice(&h.to_be_bytes());
    sof.extend_from_slice(&w.to_be_bytes());
    sof.push(n as u8);
    for c in 0..n {
        sof.extend_from_slice(&[c as u8 + 1, 0x11, u8::from(chroma(pixels, c))]);
    }
    segment(
        &mut out,
        if options.progressive { 0xC2 } else { 0xC0 },
        &sof,
    );
    let mut dht = Vec::new();
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALUES),
        (0x01, &DC_CHROMA_BITS, &DC_VALUES),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES),
    ];
    for (class_id, bits, values) in tables {
        dht.push(class_id);
        dht.extend_from_slice(bits);
        dht.extend_from_slice(values);
    }
    segment(&mut out, 0xC4, &dht);
    out
}

/// The four Huffman tables: DC luma, DC chroma, AC luma, AC chroma.
struct Tables {
    dc: [Huffman; 2],
    ac: [Huffman; 2],
}

impl Tables {
    fn new() -> Self {
        Self {
            dc: [
                Huffman::new(&DC_LUMA_BITS, &DC_VALUES),
                Huffman::new(&DC_CHROMA_BITS, &DC_VALUES),
            ],
            ac: [
                Huffman::new(&AC_LUMA_BITS, &AC_LUMA_VALUES),
                Huffman::new(&AC_CHROMA_BITS, &AC_CHROMA_VALUES),
            ],
        }
    }
}

/// Codes the difference of a block's DC from the previous one.
fn code_dc(bits: &mut Bits, table: &Huffman, dc: i32, prev: &mut i32) {
    let (size, extra) = category(dc - *prev);
    *prev = dc;
    bits.symbol(table, size);
    bits.put(extra, size);
}

/// Codes the AC coefficients `ss..=se` (zig-zag) of a block: runs of
/// zeros and ZRL (0xF0) before each non-zero one, EOB (0x00) after the
/// last when zeros remain (for progressive scans: an end-of-band run of 1).
fn code_ac(bits: &mut Bits, table: &Huffman, block: &[i32; 64], ss: usize, se: usize) {
    let mut run = 0u8;
    for &v in &block[ss..=se] {
        if v == 0 {
            run += 1;
            continue;
        }
        while run >= 16 {
            bits.symbol(table, 0xF0);
            run -= 16;
        }
        let (size, extra) = category(v);
        bits.symbol(table, (run << 4) | size);
        bits.put(extra, size);
        run = 0;
    }
    if run > 0 {
        bits.symbol(table, 0x00);
    }
}

/// A scan header: the components (with their table selectors) and the
/// spectral band.
fn sos(out: &mut Vec<u8>, pixels: &Pixels<'_>, comps: &[usize], ss: u8, se: u8) {
    let mut p = vec![comps.len() as u8];
    for &c in comps {
        let t = u8::from(chroma(pixels, c));
        p.extend_from_slice(&[c as u8 + 1, (t << 4) | t]);
    }
    p.extend_from_slice(&[ss, se, 0]);
    segment(out, 0xDA, &p);
}

/// Encodes `pixels` (`width × height`) as a JPEG file.
///
/// # Errors
///
/// [`FixtureError::Size`] when the sample count does not match the size
/// or a side is 0 or above 65,535.
pub fn encode(
    width: usize,
    height: usize,
    pixels: Pixels<'_>,
    options: &JpegOptions,
) -> Result<Vec<u8>, FixtureError> {
    let n = pixels.components();
    let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 && pixels.samples().len() == width * height * n => (w, h),
        _ => {
            return Err(FixtureError::Size {
                width,
                height,
                samples: pixels.samples().len(),
                components: n,
            });
        }
    };
    let quant = [
        scaled(&LUMA_Q, options.quality),
        scaled(&CHROMA_Q, options.quality),
    ];
    let planes: Vec<Plane> = planes(&pixels, width * height)
        .iter()
        .enumerate()
        .map(|(c, p)| transform(p, width, height, &quant[usize::from(chroma(&pixels, c))]))
        .collect();
    let tables = Tables::new();
    let t = |c: usize| usize::from(chroma(&pixels, c));
    let mut out = header(&pixels, w, h, options);
    let blocks = planes[0].blocks.len();
    let all: Vec<usize> = (0..n).collect();
    // baseline: one scan, every coefficient; progressive: the DC scan
    sos(
        &mut out,
        &pixels,
        &all,
        0,
        if options.progressive { 0 } else { 63 },
    );
    let mut bits = Bits::default();
    let mut prev = vec![0i32; n];
    for b in 0..blocks {
        for c in 0..n {
            let block = &planes[c].blocks[b];
            code_dc(&mut bits, &tables.dc[t(c)], block[0], &mut prev[c]);
            if !options.progressive {
                code_ac(&mut bits, &tables.ac[t(c)], block, 1, 63);
            }
        }
    }
    out.extend(bits.finish());
    if options.progressive {
        for (ss, se) in [(1u8, 5u8), (6, 63)] {
            for (c, plane) in planes.iter().enumerate() {
                sos(&mut out, &pixels, &[c], ss, se);
                let mut bits = Bits::default();
                for block in &plane.blocks {
                    code_ac(&mut bits, &tables.ac[t(c)], block, ss.into(), se.into());
                }
                out.extend(bits.finish());
            }
        }
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_table_f1() {
        assert_eq!(category(0), (0, 0));
        assert_eq!(category(1), (1, 1));
        assert_eq!(category(-1), (1, 0));
        assert_eq!(category(-3), (2, 0));
        assert_eq!(category(5), (3, 5));
        assert_eq!(category(-1023).0, 10);
    }

    #[test]
    fn stuffing_follows_every_ff_byte_and_padding_is_ones() {
        let mut bits = Bits::default();
        bits.put(0xFF, 8);
        bits.put(0, 1);
        assert_eq!(bits.finish(), vec![0xFF, 0x00, 0x7F]);
    }

    #[test]
    fn huffman_codes_are_canonical() {
        let dc = Huffman::new(&DC_LUMA_BITS, &DC_VALUES);
        // Table K.3: category 0 is "00", 1 is "010", 11 is "111111110"
        assert_eq!(dc.codes[0], (0b00, 2));
        assert_eq!(dc.codes[1], (0b010, 3));
        assert_eq!(dc.codes[11], (0b1_1111_1110, 9));
    }

    #[test]
    fn bad_sizes_are_refused() {
        let px = [0u8; 12];
        assert!(encode(2, 2, Pixels::Rgb(&px), &JpegOptions::default()).is_ok());
        assert!(encode(3, 2, Pixels::Rgb(&px), &JpegOptions::default()).is_err());
        assert!(encode(0, 0, Pixels::Gray(&[]), &JpegOptions::default()).is_err());
    }
}
