//! The PNG of one scored stream (drawn with `plotters`): the signal with the
//! labelled faults shaded (top), the anomaly score with the threshold and
//! the active alarms (bottom), time in seconds.

use std::path::Path;

use plotters::prelude::*;

use super::sim::{Episode, FS};
use crate::{Error, Result};

/// What [`stream`] draws.
pub struct StreamPlot<'a> {
    /// Title.
    pub title: &'a str,
    /// The signal.
    pub signal: &'a [f32],
    /// The score of every reading.
    pub score: &'a [f32],
    /// The alarm threshold.
    pub threshold: f32,
    /// Whether an alarm is active at each reading.
    pub alarms: &'a [bool],
    /// The labelled faults.
    pub episodes: &'a [Episode],
    /// The readings to draw.
    pub range: std::ops::Range<usize>,
}

/// Draws `p` to a PNG at `path` (a temporary file, then renamed). Returns
/// whether text could be drawn (a font was found).
pub fn stream(path: &Path, p: &StreamPlot<'_>) -> Result<bool> {
    let labels = crate::plot::font();
    let err = |e: &dyn std::fmt::Display| Error(format!("cannot draw {}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp.png");
    let tmp = std::path::PathBuf::from(tmp);
    let (a, b) = (p.range.start, p.range.end.min(p.signal.len()));
    let secs = |t: usize| t as f64 / FS;
    {
        let root = BitMapBackend::new(&tmp, (1200, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = if labels { root.titled(p.title, ("sans-serif", 22)).map_err(|e| err(&e))? } else { root };
        let (top, bottom) = root.split_vertically(300);
        let fault_fill = RGBColor(255, 200, 120).mix(0.45);
        let ymax = p.signal[a..b].iter().fold(0.1f32, |m, &x| m.max(x.abs())) as f64 * 1.05;
        let mut c = ChartBuilder::on(&top);
        c.margin(10);
        if labels {
            c.x_label_area_size(30).y_label_area_size(50);
        }
        let mut c = c.build_cartesian_2d(secs(a)..secs(b), -ymax..ymax).map_err(|e| err(&e))?;
        let mut mesh = c.configure_mesh();
        if labels {
            mesh.y_desc("signal");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        let spans = |lo: f64, hi: f64| {
            p.episodes.iter().filter(|e| e.end() > a && e.start < b).map(move |e| {
                Rectangle::new([(secs(e.start.max(a)), lo), (secs(e.end().min(b)), hi)], fault_fill.filled())
            })
        };
        c.draw_series(spans(-ymax, ymax)).map_err(|e| err(&e))?;
        let blue = RGBColor(31, 119, 180);
        c.draw_series(LineSeries::new((a..b).map(|t| (secs(t), p.signal[t] as f64)), blue.stroke_width(1)))
            .map_err(|e| err(&e))?;
        if labels {
            for e in p.episodes.iter().filter(|e| e.start >= a && e.start < b) {
                c.draw_series(std::iter::once(Text::new(
                    e.kind.name(),
                    (secs(e.start), ymax * 0.92),
                    ("sans-serif", 14),
                )))
                .map_err(|e| err(&e))?;
            }
        }
        let smax = (p.score[a..b].iter().fold(p.threshold, |m, &x| m.max(x)) as f64 * 1.1).max(1e-3);
        let mut c = ChartBuilder::on(&bottom);
        c.margin(10);
        if labels {
            c.x_label_area_size(36).y_label_area_size(50);
        }
        let mut c = c.build_cartesian_2d(secs(a)..secs(b), 0.0..smax).map_err(|e| err(&e))?;
        let mut mesh = c.configure_mesh();
        if labels {
            mesh.x_desc("seconds").y_desc("surprise (nats, smoothed)");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        c.draw_series(spans(0.0, smax)).map_err(|e| err(&e))?;
        let red = RGBColor(214, 39, 40);
        let alarm = (a..b)
            .filter(|&t| p.alarms[t])
            .map(|t| Rectangle::new([(secs(t), 0.0), (secs(t + 1), smax * 0.04)], red.filled()));
        c.draw_series(alarm).map_err(|e| err(&e))?;
        let black = RGBColor(40, 40, 40);
        let line = c
            .draw_series(LineSeries::new((a..b).map(|t| (secs(t), p.score[t] as f64)), black.stroke_width(1)))
            .map_err(|e| err(&e))?;
        if labels {
            line.label("score").legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], black.stroke_width(2)));
        }
        let thr = c
            .draw_series(LineSeries::new(
                [(secs(a), p.threshold as f64), (secs(b), p.threshold as f64)],
                red.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if labels {
            thr.label("threshold (alarms: red marks)")
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
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
