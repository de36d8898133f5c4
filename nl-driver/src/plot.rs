//! The PNG loss curve of a training run (drawn with `plotters`).
//!
//! Bits per byte (y) against training tokens (x, in millions): the smoothed
//! training loss as a line, each held-out evaluation as a point joined by a
//! line. Text needs a TrueType font; the first of `$NL_FONT` and a few
//! usual system paths (DejaVu Sans, Liberation Sans) that exists is used.
//! Without one the curve is drawn without labels and the caller is told.

use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Result};

/// One point of a curve: (training tokens, bits per byte).
pub type Point = (f64, f64);

/// Font files tried, in order, after `$NL_FONT`.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font as plotters' `sans-serif` once; whether one was found.
pub(crate) fn font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let env = std::env::var("NL_FONT").ok();
        for path in env.iter().map(String::as_str).chain(FONTS.iter().copied()) {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps a registered font for the life of the program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws the loss curve of `title` to a PNG file at `path` (written to a
/// temporary file, then renamed). Returns whether the text could be drawn
/// (a font was found).
pub fn loss_curve(path: &Path, title: &str, train: &[Point], held_out: &[Point]) -> Result<bool> {
    let labels = font();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp.png");
    let tmp = std::path::PathBuf::from(tmp);
    let err = |e: &dyn std::fmt::Display| Error(format!("cannot draw the loss curve {}: {e}", path.display()));
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let all = train.iter().chain(held_out);
        let x_max = all.clone().map(|p| p.0).fold(1.0f64, f64::max) / 1e6;
        let (mut y_lo, mut y_hi) = all
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        if !y_lo.is_finite() {
            (y_lo, y_hi) = (0.0, 8.0);
        }
        let pad = ((y_hi - y_lo) * 0.05).max(0.05);
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16);
        if labels {
            builder.caption(title, ("sans-serif", 22)).x_label_area_size(44).y_label_area_size(56);
        }
        let mut chart =
            builder.build_cartesian_2d(0.0..x_max, (y_lo - pad).max(0.0)..y_hi + pad).map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc("training tokens (millions)").y_desc("bits per byte");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        let blue = RGBColor(31, 119, 180);
        let orange = RGBColor(255, 127, 14);
        let line = chart
            .draw_series(LineSeries::new(train.iter().map(|&(x, y)| (x / 1e6, y)), blue.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if labels {
            line.label("train (smoothed)")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], blue.stroke_width(2)));
        }
        let points = held_out.iter().map(|&(x, y)| (x / 1e6, y));
        let held = chart.draw_series(LineSeries::new(points.clone(), orange.stroke_width(2))).map_err(|e| err(&e))?;
        if labels {
            held.label("held-out")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], orange.stroke_width(2)));
        }
        chart.draw_series(points.map(|p| Circle::new(p, 4, orange.filled()))).map_err(|e| err(&e))?;
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(&e)
    })?;
    Ok(labels)
}
