//! Loss (and ROUGE-L) curves as a PNG: a dependency-light line chart (own rasteriser and 5×7
//! font, the `png` crate for encoding) so that it builds offline and anywhere; several charts
//! stack into one image.

use std::path::Path;

use crate::error::{Result, TrainError};

/// One curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label (upper-cased when drawn).
    pub name: String,
    /// `(x, y)` points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A chart of several curves with axes, ticks and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis (drawn in the top-left corner).
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
}

const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// 5×7 glyphs, one string of 7 rows × 5 columns per character (`#` = ink).
fn glyph(c: char) -> Option<[&'static str; 7]> {
    Some(match c {
        '0' => [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
        '1' => ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
        '2' => [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
        '3' => ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
        '4' => ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
        '5' => ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
        '6' => ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
        '7' => ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
        '8' => [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
        '9' => [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
        'A' => [" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"],
        'B' => ["#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "],
        'C' => [" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "],
        'D' => ["#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "],
        'E' => ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"],
        'F' => ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "],
        'G' => [" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"],
        'H' => ["#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"],
        'I' => [" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
        'J' => ["  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "],
        'K' => ["#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"],
        'L' => ["#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"],
        'M' => ["#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"],
        'N' => ["#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"],
        'O' => [" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "],
        'P' => ["#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "],
        'Q' => [" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"],
        'R' => ["#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"],
        'S' => [" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "],
        'T' => ["#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "],
        'U' => ["#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "],
        'V' => ["#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "],
        'W' => ["#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "],
        'X' => ["#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"],
        'Y' => ["#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "],
        'Z' => ["#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"],
        '.' => ["     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "],
        ',' => ["     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   "],
        '-' => ["     ", "     ", "     ", "#####", "     ", "     ", "     "],
        '+' => ["     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "],
        '_' => ["     ", "     ", "     ", "     ", "     ", "     ", "#####"],
        ':' => ["     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "],
        '=' => ["     ", "     ", "#####", "     ", "#####", "     ", "     "],
        '(' => ["   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "],
        ')' => [" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "],
        '/' => ["     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     "],
        ' ' => ["     "; 7],
        _ => return None,
    })
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self { w, h, px: vec![255; w * h * 3] }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    /// Bresenham line, `thick` pixels wide.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..thick {
                for oy in 0..thick {
                    self.set(x + ox - thick / 2, y + oy - thick / 2, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }
    /// Text at scale `s` with its top-left corner at `(x, y)`; returns the width drawn.
    fn text(&mut self, x: i64, y: i64, text: &str, c: [u8; 3], s: i64) -> i64 {
        let mut cx = x;
        for ch in text.chars().flat_map(char::to_uppercase) {
            if let Some(g) = glyph(ch) {
                for (row, bits) in g.iter().enumerate() {
                    for (col, b) in bits.bytes().enumerate() {
                        if b == b'#' {
                            self.rect(cx + col as i64 * s, y + row as i64 * s, s, s, c);
                        }
                    }
                }
            }
            cx += 6 * s;
        }
        cx - x
    }
}

/// Tick label: short and readable (`0.5`, `12`, `1.2E-3`).
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
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

impl Chart {
    /// Renders the chart to RGB pixels (`width · height · 3` bytes).
    pub fn render(&self) -> Vec<u8> {
        let (w, h) = (self.width.max(200), self.height.max(150));
        let mut cv = Canvas::new(w, h);
        let black = [0, 0, 0];
        let grey = [220, 220, 220];
        let pts = self.series.iter().flat_map(|s| s.points.iter().copied());
        let pts: Vec<(f64, f64)> = pts.filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in &pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if pts.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        (y0, y1) = (y0 - pad, y1 + pad);
        let (left, right, top, bottom) = (70i64, w as i64 - 20, 40i64, h as i64 - 50);
        let px = |x: f64| left + ((x - x0) / (x1 - x0) * (right - left) as f64).round() as i64;
        let py = |y: f64| bottom - ((y - y0) / (y1 - y0) * (bottom - top) as f64).round() as i64;
        // Grid and ticks.
        for i in 0..=5 {
            let fy = y0 + (y1 - y0) * i as f64 / 5.0;
            let y = py(fy);
            cv.line((left, y), (right, y), grey, 1);
            let label = tick_label(fy);
            cv.text(left - 8 - 6 * label.len() as i64, y - 3, &label, black, 1);
            let fx = x0 + (x1 - x0) * i as f64 / 5.0;
            let x = px(fx);
            cv.line((x, top), (x, bottom), grey, 1);
            let label = tick_label(fx);
            cv.text(x - 3 * label.len() as i64, bottom + 8, &label, black, 1);
        }
        cv.line((left, bottom), (right, bottom), black, 1);
        cv.line((left, top), (left, bottom), black, 1);
        cv.text(left, 12, &self.title, black, 2);
        let xl = &self.x_label;
        cv.text((left + right) / 2 - 3 * xl.len() as i64, bottom + 26, xl, black, 1);
        cv.text(4, top - 12, &self.y_label, black, 1);
        // Curves.
        for (k, s) in self.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let p: Vec<(i64, i64)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (px(x), py(y)))
                .collect();
            for pair in p.windows(2) {
                cv.line(pair[0], pair[1], c, 2);
            }
            if p.len() == 1 {
                cv.rect(p[0].0 - 2, p[0].1 - 2, 5, 5, c);
            }
        }
        // Legend, top right.
        let longest = self.series.iter().map(|s| s.name.len()).max().unwrap_or(0) as i64;
        let lx = right - 6 * longest - 30;
        for (k, s) in self.series.iter().enumerate() {
            let y = top + 8 + 14 * k as i64;
            let c = PALETTE[k % PALETTE.len()];
            cv.rect(lx, y, 16, 7, c);
            cv.text(lx + 22, y, &s.name, black, 1);
        }
        cv.px
    }

    /// Rendered size in pixels (`width`, `height`, at least 200 × 150).
    pub fn size(&self) -> (usize, usize) {
        (self.width.max(200), self.height.max(150))
    }

    /// Writes the chart as a PNG file.
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be written.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let (w, h) = self.size();
        write_rgb_png(path, w, h, &self.render())
    }
}

/// Renders `charts` one below the other into one image, as wide as the widest (narrower ones
/// padded with white on the right): `(width, height, rgb pixels)`.
pub fn render_stack(charts: &[Chart]) -> (usize, usize, Vec<u8>) {
    let w = charts.iter().map(|c| c.size().0).max().unwrap_or(200);
    let h: usize = charts.iter().map(|c| c.size().1).sum();
    let mut px = vec![255u8; w * h * 3];
    let mut top = 0;
    for c in charts {
        let (cw, ch) = c.size();
        let img = c.render();
        for y in 0..ch {
            let dst = ((top + y) * w) * 3;
            px[dst..dst + cw * 3].copy_from_slice(&img[y * cw * 3..(y + 1) * cw * 3]);
        }
        top += ch;
    }
    (w, h, px)
}

/// Writes `charts` one below the other as one PNG file (see [`render_stack`]).
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be written.
pub fn write_png_stack(charts: &[Chart], path: &Path) -> Result<()> {
    let (w, h, px) = render_stack(charts);
    write_rgb_png(path, w, h, &px)
}

fn write_rgb_png(path: &Path, w: usize, h: usize, pixels: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let io = |e: png::EncodingError| TrainError::io(path, std::io::Error::other(e.to_string()));
    let mut writer = enc.write_header().map_err(io)?;
    writer.write_image_data(pixels).map_err(io)?;
    writer.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_5_by_7() {
        for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,-+_:=()/ ".chars() {
            let g = glyph(c).unwrap();
            assert!(g.iter().all(|r| r.len() == 5), "{c}");
        }
    }

    #[test]
    fn renders_and_writes_a_png() {
        let chart = Chart {
            title: "Loss".into(),
            x_label: "step".into(),
            y_label: "nats".into(),
            series: vec![
                Series {
                    name: "a".into(),
                    points: (0..20).map(|i| (i as f64, 3.0 / (1.0 + i as f64))).collect(),
                },
                Series { name: "b".into(), points: vec![(5.0, 1.0)] },
            ],
            width: 320,
            height: 200,
        };
        let px = chart.render();
        assert_eq!(px.len(), 320 * 200 * 3);
        assert!(px.iter().any(|&v| v != 255));
        let p = std::env::temp_dir().join(format!("kd-train-plot-{}.png", std::process::id()));
        chart.write_png(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn stacks_charts_top_to_bottom() {
        let chart = |w, h, name: &str| Chart {
            title: name.into(),
            x_label: "step".into(),
            y_label: String::new(),
            series: vec![Series { name: name.into(), points: vec![(0.0, 1.0), (1.0, 0.5)] }],
            width: w,
            height: h,
        };
        let (a, b) = (chart(320, 200, "loss"), chart(240, 160, "rouge-l"));
        let (w, h, px) = render_stack(&[a.clone(), b.clone()]);
        assert_eq!((w, h, px.len()), (320, 360, 320 * 360 * 3));
        // The top 200 rows are the first chart; the second starts below, padded with white.
        assert_eq!(px[..320 * 200 * 3], a.render()[..]);
        let rb = b.render();
        for y in 0..160 {
            let row = &px[((200 + y) * 320) * 3..((200 + y + 1) * 320) * 3];
            assert_eq!(row[..240 * 3], rb[y * 240 * 3..(y + 1) * 240 * 3]);
            assert!(row[240 * 3..].iter().all(|&v| v == 255));
        }
        let p = std::env::temp_dir().join(format!("kd-train-stack-{}.png", std::process::id()));
        write_png_stack(&[a, b], &p).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[1..4], b"PNG");
        std::fs::remove_file(&p).unwrap();
    }
}
