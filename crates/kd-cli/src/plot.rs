//! Loss, perplexity and ROUGE-L curves as PNG line charts, drawn with
//! [`plotters`](https://docs.rs/plotters)' bitmap backend.
//!
//! No system library is involved: text is rasterised by plotters' `ab_glyph` feature with a
//! font compiled into `kd` (a ~30 KB Latin-1 + Greek subset of DejaVu Sans, see
//! `crates/kd-cli/assets/fonts/`), and pixels are encoded with the `png` crate. Several charts
//! stack into one image ([`write_png_stack`]), as `kd train` does for loss above ROUGE-L.
//!
//! # Example
//! ```text
//! let chart = Chart {
//!     title: "training (kd)".into(),
//!     x_label: "step".into(),
//!     y_label: "loss (nats)".into(),
//!     series: vec![Series { name: "train".into(), points: vec![(0.0, 3.2), (10.0, 2.1)] }],
//!     width: 800,
//!     height: 500,
//! };
//! chart.write_png(Path::new("loss.png"))?;
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Font family name the embedded font is registered under.
const FONT_FAMILY: &str = "sans-serif";

/// DejaVu Sans cut down to Latin-1, Greek and a few signs (licence beside the file).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");

/// Smallest image drawn, in pixels; smaller requested sizes are raised to it.
const MIN_SIZE: (usize, usize) = (200, 150);

/// Curves with at most this many drawable points also get a dot at every point.
const MAX_MARKED_POINTS: usize = 30;

/// Series colours, in order (matplotlib's `tab10`); the k-th series takes `PALETTE[k % 8]`.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Why a chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The font compiled into `kd` did not parse; the build is damaged, rebuild `kd`.
    #[error("the embedded chart font is not a valid TrueType font")]
    Font,
    /// plotters failed while drawing (a bug in the chart code: please report it with the data).
    #[error("drawing the chart: {message}")]
    Draw {
        /// plotters' description of the failure.
        message: String,
    },
    /// The PNG file could not be created; check that its directory exists and is writable.
    #[error("creating {}: {source}", path.display())]
    Io {
        /// The file that was being written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PNG could not be encoded or written out (often a full disk).
    #[error("writing PNG {}: {source}", path.display())]
    Png {
        /// The file that was being written.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: png::EncodingError,
    },
}

/// Result of the plotting functions.
pub type Result<T> = std::result::Result<T, PlotError>;

/// One named curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points, joined in this order; points with a NaN or infinite coordinate are
    /// skipped (their neighbours are joined).
    pub points: Vec<(f64, f64)>,
}

/// A line chart of several curves with a title, labelled axes, a grid and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis (drawn vertically beside it).
    pub y_label: String,
    /// The curves, coloured by [`PALETTE`] in order.
    pub series: Vec<Series>,
    /// Image width in pixels (at least 200).
    pub width: usize,
    /// Image height in pixels (at least 150).
    pub height: usize,
}

impl Chart {
    /// Drawn size in pixels: `(width, height)`, raised to at least 200 × 150.
    pub fn size(&self) -> (usize, usize) {
        (self.width.max(MIN_SIZE.0), self.height.max(MIN_SIZE.1))
    }

    /// Writes the chart as an RGB PNG file of [`Chart::size`].
    ///
    /// # Errors
    /// [`PlotError::Io`] / [`PlotError::Png`] when the file cannot be written.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        write_png_stack(std::slice::from_ref(self), path)
    }
}

/// Renders `charts` one below the other into one image as wide as the widest (narrower ones
/// padded with white on the right): `(width, height, rgb)` with `rgb` row-major,
/// `width · height · 3` bytes. No charts give a blank 200 × 150 image.
///
/// # Errors
/// [`PlotError::Font`] or [`PlotError::Draw`] (neither expected from valid input).
pub fn render_stack(charts: &[Chart]) -> Result<(usize, usize, Vec<u8>)> {
    register_font()?;
    let width = charts.iter().map(|c| c.size().0).max().unwrap_or(MIN_SIZE.0);
    let height = charts.iter().map(|c| c.size().1).sum::<usize>().max(MIN_SIZE.1);
    let mut rgb = vec![255u8; width * height * 3];
    {
        let backend = BitMapBackend::with_buffer(&mut rgb, (width as u32, height as u32));
        let mut rest = backend.into_drawing_area();
        for chart in charts {
            let (w, h) = chart.size();
            let (row, below) = rest.split_vertically(h as u32);
            let (area, _padding) = row.split_horizontally(w as u32);
            draw(chart, &area).map_err(|e| PlotError::Draw { message: e.to_string() })?;
            rest = below;
        }
        rest.present().map_err(|e| PlotError::Draw { message: e.to_string() })?;
    }
    Ok((width, height, rgb))
}

/// Writes `charts` one below the other as one RGB PNG file (layout of [`render_stack`]).
///
/// # Errors
/// [`PlotError::Io`] / [`PlotError::Png`] when the file cannot be written.
pub fn write_png_stack(charts: &[Chart], path: &Path) -> Result<()> {
    let (width, height, rgb) = render_stack(charts)?;
    let file = std::fs::File::create(path)
        .map_err(|source| PlotError::Io { path: path.to_path_buf(), source })?;
    let png_err = |source| PlotError::Png { path: path.to_path_buf(), source };
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(&rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

/// Curves from CSV text with the header `series,x,y`: one point per line, points of one series in
/// the order given (`kd plot --csv`, e.g. a data-efficiency curve). Blank lines are skipped.
///
/// # Errors
/// A missing or different header, a line without three fields or with a non-number, naming the
/// line; no point at all.
pub fn csv_series(text: &str) -> anyhow::Result<Vec<Series>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, h)) if h.split(',').map(str::trim).eq(["series", "x", "y"]) => {}
        other => anyhow::bail!(
            "expected the header `series,x,y`, got {:?}",
            other.map_or("nothing", |(_, h)| h)
        ),
    }
    let mut series: Vec<Series> = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, x, y] = f[..] else {
            anyhow::bail!("line {}: expected `series,x,y`, got {line:?}", i + 1);
        };
        let num = |v: &str| {
            v.parse::<f64>().map_err(|_| anyhow::anyhow!("line {}: `{v}` is not a number", i + 1))
        };
        let point = (num(x)?, num(y)?);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series { name: name.to_string(), points: vec![point] }),
        }
    }
    if series.is_empty() {
        anyhow::bail!("no point after the header");
    }
    Ok(series)
}

/// Registers the embedded font with plotters once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// The finite points of a series.
fn finite(s: &Series) -> Vec<(f64, f64)> {
    s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()
}

/// Axis ranges covering every finite point: x exactly, y with 5 % padding; a unit range when
/// there is no point and a widened one when all values are equal.
fn ranges(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in series.iter().flat_map(finite) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6 * y1.abs().max(1.0));
    ((x0, x1), (y0 - pad, y1 + pad))
}

/// Tick label: short and readable (`0`, `0.50`, `12.5`, `1500`, `1.2e-3`).
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        "0".into()
    } else if !(1e-2..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// x tick label: whole numbers (steps) without decimals, anything else as [`tick_label`].
fn x_tick_label(v: f64) -> String {
    let whole = (v - v.round()).abs() < 1e-9 * v.abs().max(1.0);
    if whole && v.abs() < 1e5 { format!("{:.0}", v.round()) } else { tick_label(v) }
}

/// Draws one chart filling `area`.
fn draw<DB: DrawingBackend>(
    chart: &Chart,
    area: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let ((x0, x1), (y0, y1)) = ranges(&chart.series);
    let mut cc = ChartBuilder::on(area)
        .caption(&chart.title, (FONT_FAMILY, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(66)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    cc.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| x_tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT_FAMILY, 13))
        .axis_desc_style((FONT_FAMILY, 15))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()?;
    for (k, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let points = finite(s);
        let marked = if points.len() <= MAX_MARKED_POINTS { points.clone() } else { Vec::new() };
        cc.draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 18, y + 4)], colour.filled()));
        cc.draw_series(marked.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    if !chart.series.is_empty() {
        cc.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_points_make_one_series_per_name() {
        let s = csv_series("series,x,y\nsft,12.5,0.1\n\nsbs,12.5,0.2\nsft,100,0.4\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), &s[0].points[..]),
            ("sft", &[(12.5, 0.1), (100.0, 0.4)][..])
        );
        assert_eq!(s[1].points, [(12.5, 0.2)]);
        let err = |t: &str| csv_series(t).unwrap_err().to_string();
        assert!(err("a,b\n").contains("header"));
        assert!(err("series,x,y\nsft,1\n").contains("line 2"));
        assert!(err("series,x,y\nsft,1,abc\n").contains("`abc`"));
        assert!(err("series,x,y\n").contains("no point"));
    }

    /// Pixels of `rgb` (`width` wide) that have exactly `colour`, as `(x, y)`.
    fn pixels_of(rgb: &[u8], width: usize, colour: RGBColor) -> Vec<(usize, usize)> {
        let c = [colour.0, colour.1, colour.2];
        rgb.chunks_exact(3)
            .enumerate()
            .filter(|(_, p)| *p == c)
            .map(|(i, _)| (i % width, i / width))
            .collect()
    }

    /// The row holding most pixels of `colour`, and how many it holds.
    fn fullest_row(rgb: &[u8], width: usize, colour: RGBColor) -> (usize, usize) {
        let mut counts = std::collections::BTreeMap::new();
        for (_, y) in pixels_of(rgb, width, colour) {
            *counts.entry(y).or_insert(0usize) += 1;
        }
        counts.into_iter().max_by_key(|&(_, n)| n).unwrap_or((0, 0))
    }

    fn flat(name: &str, y: f64) -> Series {
        Series { name: name.into(), points: (0..=10).map(|i| (i as f64, y)).collect() }
    }

    fn chart(series: Vec<Series>, width: usize, height: usize) -> Chart {
        Chart {
            title: "held-out loss".into(),
            x_label: "step".into(),
            y_label: "loss (nats)".into(),
            series,
            width,
            height,
        }
    }

    #[test]
    fn curves_are_drawn_in_their_colours_at_their_heights() {
        let c = chart(vec![flat("high", 10.0), flat("low", 0.0)], 480, 320);
        let (w, h, rgb) = render_stack(std::slice::from_ref(&c)).unwrap();
        assert_eq!((w, h, rgb.len()), (480, 320, 480 * 320 * 3));
        let (high_row, high_n) = fullest_row(&rgb, w, PALETTE[0]);
        let (low_row, low_n) = fullest_row(&rgb, w, PALETTE[1]);
        // Each flat curve is one horizontal line across most of the plot width...
        assert!(high_n > w / 2 && low_n > w / 2, "line lengths {high_n}, {low_n} of {w}");
        // ...the y = 10 one well above the y = 0 one (y grows upwards, rows downwards).
        assert!(high_row + h / 2 < low_row, "rows {high_row} (y = 10) and {low_row} (y = 0)");
        // Both stay inside the image, clear of the title band and the x-axis labels.
        assert!(high_row > 30 && low_row < h - 40, "rows {high_row}, {low_row}");
    }

    #[test]
    fn a_rising_curve_runs_from_bottom_left_to_top_right() {
        let rising = Series { name: "rise".into(), points: vec![(0.0, 0.0), (100.0, 1.0)] };
        let (w, _, rgb) = render_stack(&[chart(vec![rising], 400, 300)]).unwrap();
        // Ignore the legend swatch (top right) by looking at the curve's left and right thirds.
        let px = pixels_of(&rgb, w, PALETTE[0]);
        let mean_row = |lo: usize, hi: usize| {
            let ys: Vec<usize> =
                px.iter().filter(|&&(x, _)| (lo..hi).contains(&x)).map(|&(_, y)| y).collect();
            assert!(!ys.is_empty(), "no curve pixels in columns {lo}..{hi}");
            ys.iter().sum::<usize>() as f64 / ys.len() as f64
        };
        let (left, right) = (mean_row(80, 180), mean_row(230, 330));
        assert!(left > right + 50.0, "left third at row {left}, right third at row {right}");
    }

    #[test]
    fn non_finite_points_are_skipped_and_do_not_stretch_the_axes() {
        let mut noisy = flat("noisy", 1.0);
        noisy.points.insert(3, (3.5, f64::NAN));
        noisy.points.insert(6, (6.5, f64::INFINITY));
        noisy.points.push((f64::NEG_INFINITY, 0.0));
        let low = flat("low", 0.0);
        let (w, h, rgb) = render_stack(&[chart(vec![noisy, low], 480, 320)]).unwrap();
        let (noisy_row, n) = fullest_row(&rgb, w, PALETTE[0]);
        let (low_row, _) = fullest_row(&rgb, w, PALETTE[1]);
        // Still one full line, and y = 1 vs y = 0 still spans most of the plot height:
        // the infinite values did not enter the range.
        assert!(n > w / 2, "line length {n} of {w}");
        assert!(noisy_row + h / 2 < low_row, "rows {noisy_row} (y = 1) and {low_row} (y = 0)");
    }

    #[test]
    fn empty_and_degenerate_charts_render_without_panicking() {
        let all_nan = Series { name: "nan".into(), points: vec![(0.0, f64::NAN)] };
        let single = Series { name: "single".into(), points: vec![(5.0, 2.0)] };
        let empty = Series { name: "empty".into(), points: vec![] };
        for series in [vec![], vec![empty.clone()], vec![all_nan, empty], vec![single]] {
            let (w, h, rgb) = render_stack(&[chart(series, 10, 10)]).unwrap();
            assert_eq!((w, h, rgb.len()), (200, 150, 200 * 150 * 3));
            // Axes and labels are drawn even without data.
            assert!(rgb.iter().any(|&v| v < 128));
        }
        // A single point is visible as a dot of its colour.
        let single = Series { name: "s".into(), points: vec![(5.0, 2.0)] };
        let (w, _, rgb) = render_stack(&[chart(vec![single], 300, 200)]).unwrap();
        assert!(pixels_of(&rgb, w, PALETTE[0]).len() > 10);
        assert_eq!(render_stack(&[]).unwrap().0, 200);
    }

    #[test]
    fn stacks_charts_top_to_bottom() {
        let (a, b) = (chart(vec![flat("a", 1.0)], 320, 200), chart(vec![flat("b", 2.0)], 240, 160));
        let (_, _, ra) = render_stack(std::slice::from_ref(&a)).unwrap();
        let (_, _, rb) = render_stack(std::slice::from_ref(&b)).unwrap();
        let (w, h, px) = render_stack(&[a, b]).unwrap();
        assert_eq!((w, h, px.len()), (320, 360, 320 * 360 * 3));
        // The top 200 rows are the first chart; the second starts below, padded with white.
        assert_eq!(px[..320 * 200 * 3], ra[..]);
        for y in 0..160 {
            let row = &px[((200 + y) * 320) * 3..((200 + y + 1) * 320) * 3];
            assert_eq!(row[..240 * 3], rb[y * 240 * 3..(y + 1) * 240 * 3], "row {y}");
            assert!(row[240 * 3..].iter().all(|&v| v == 255), "padding of row {y}");
        }
    }

    #[test]
    fn writes_a_png_that_decodes_to_the_rendered_pixels() {
        let c = chart(vec![flat("a", 1.0), flat("b", 2.0)], 360, 240);
        let dir = std::env::temp_dir().join(format!("kd-cli-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        c.write_png(&path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (360, 240));
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        let (_, _, rgb) = render_stack(std::slice::from_ref(&c)).unwrap();
        assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
        assert!(!pixels_of(&rgb, 360, PALETTE[1]).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writing_into_a_missing_directory_is_an_io_error() {
        let path = std::env::temp_dir().join("kd-cli-plot-no-such-dir").join("x").join("c.png");
        let err = chart(vec![], 200, 150).write_png(&path).unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }), "{err}");
    }

    #[test]
    fn tick_labels_are_short() {
        let cases =
            [(0.0, "0"), (0.5, "0.50"), (12.34, "12.3"), (1500.0, "1500"), (1.2e-3, "1.2e-3")];
        for (v, want) in cases {
            assert_eq!(tick_label(v), want, "{v}");
        }
        assert_eq!(tick_label(2.5e6), "2.5e6");
        let steps = [(20.000000000000004, "20"), (0.0, "0"), (2.5, "2.50"), (3e6, "3.0e6")];
        for (v, want) in steps {
            assert_eq!(x_tick_label(v), want, "{v}");
        }
    }

    #[test]
    fn ranges_ignore_non_finite_points_and_widen_flat_data() {
        let s = Series { name: "s".into(), points: vec![(1.0, 2.0), (f64::NAN, 9.0), (1.0, 2.0)] };
        let ((x0, x1), (y0, y1)) = ranges(&[s]);
        assert_eq!((x0, x1), (0.5, 1.5));
        assert!(y0 < 2.0 && y1 > 2.0 && y1 - y0 < 1e-3, "{y0}..{y1}");
        assert_eq!(ranges(&[]), ((0.0, 1.0), (0.0, 1.0)));
    }
}
