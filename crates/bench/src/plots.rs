//! SVG figures, drawn with plotters' SVG backend. Text is written as SVG `<text>` elements and
//! laid out with plotters' built-in size estimate: no system font is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duplex_engine::{Action, Event, Note};
use duplex_model::{Millis, Policy};
use duplex_sim::{Report, What, secs};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::BenchError;
use crate::compare::PolicyComparison;
use crate::stats::Stats;
use crate::storm::StormReport;

/// One recovery timeline per policy, stacked on a shared time axis.
pub const TIMELINES_SVG: &str = "timelines.svg";
/// MTTR and time back to duplex per policy: medians with their p10–p90 band.
pub const MTTR_SVG: &str = "mttr.svg";
/// The storm's recovery curve: pairs serving and pairs duplex over virtual time.
pub const STORM_SVG: &str = "storm-recovery.svg";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawError = DrawingAreaErrorKind<std::io::Error>;

const FONT: &str = "sans-serif";
const STEP_OK: RGBColor = RGBColor(124, 191, 122);
const STEP_FAILED: RGBColor = RGBColor(226, 112, 100);
const STEP_OPEN: RGBColor = RGBColor(180, 180, 180);
const OUTAGE: RGBColor = RGBColor(190, 30, 45);
const SIMPLEX: RGBColor = RGBColor(243, 182, 64);
const FAULT: RGBColor = RGBColor(190, 30, 45);
const REPORTED: RGBColor = RGBColor(40, 90, 200);
const MTTR_BAR: RGBColor = RGBColor(70, 110, 170);
const DUPLEX_BAR: RGBColor = RGBColor(160, 190, 225);
const SERVING_LINE: RGBColor = RGBColor(40, 110, 60);
const DUPLEX_LINE: RGBColor = RGBColor(40, 90, 200);

/// Writes the figures into `out_dir` (created if missing) and returns their paths:
///
/// - [`TIMELINES_SVG`] from `timeline` (one [`Report`] per policy, e.g. from
///   [`crate::timelines`]; left out when `timeline` is empty): per policy, a row per pair with
///   its outage (fault → ACT serving) and simplex time (serving → duplex), and a row per unit
///   with each recovery step as a bar from `StepStarted` to `StepSucceeded`/`StepFailed`;
///   vertical lines at each fault and at its report reaching the engine.
/// - [`MTTR_SVG`] from `cmp`: per policy, median MTTR and median time back to duplex as bars,
///   the p10–p90 band as whiskers, and the paired ratio to the ladder under the policy's name.
/// - [`STORM_SVG`] from `storm`: pairs serving and pairs duplex against virtual time after the
///   rack failed.
pub fn render_plots(
    cmp: &PolicyComparison,
    storm: &StormReport,
    timeline: &[Report],
    out_dir: &Path,
) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(out_dir).map_err(|source| BenchError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let mut figures = Vec::new();
    if !timeline.is_empty() {
        figures.push((TIMELINES_SVG, draw_timelines(timeline)?));
    }
    figures.push((MTTR_SVG, draw_mttr(cmp)?));
    figures.push((STORM_SVG, draw_storm(storm)?));
    let mut written = Vec::new();
    for (name, svg) in figures {
        let path = out_dir.join(name);
        std::fs::write(&path, svg).map_err(|source| BenchError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Draws into an SVG held in memory.
fn render(
    file: &str,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), DrawError>,
) -> Result<String, BenchError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present())
            .map_err(|e| BenchError::Plot {
                file: file.to_owned(),
                message: e.to_string(),
            })?;
    }
    Ok(buf)
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

#[allow(clippy::cast_precision_loss)]
fn s(ms: Millis) -> f64 {
    ms as f64 / 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn count(n: usize) -> f64 {
    n as f64
}

// ---------------------------------------------------------------------------------------------
// (a) recovery timelines
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum BarKind {
    Outage,
    Simplex,
    Ok,
    Failed,
    Open,
}

impl BarKind {
    const ALL: [BarKind; 5] = [
        BarKind::Outage,
        BarKind::Simplex,
        BarKind::Ok,
        BarKind::Failed,
        BarKind::Open,
    ];

    fn color(self) -> RGBColor {
        match self {
            BarKind::Outage => OUTAGE,
            BarKind::Simplex => SIMPLEX,
            BarKind::Ok => STEP_OK,
            BarKind::Failed => STEP_FAILED,
            BarKind::Open => STEP_OPEN,
        }
    }

    fn legend(self) -> &'static str {
        match self {
            BarKind::Outage => "no ACT serving",
            BarKind::Simplex => "serving, not duplex",
            BarKind::Ok => "step: unit came up",
            BarKind::Failed => "step failed",
            BarKind::Open => "step without answer",
        }
    }
}

struct Bar {
    row: usize,
    from: f64,
    to: Option<f64>,
    label: String,
    kind: BarKind,
}

/// One policy's timeline, in seconds of virtual time.
struct Lane {
    title: String,
    rows: Vec<String>,
    bars: Vec<Bar>,
    faults: Vec<f64>,
    reported: Vec<f64>,
}

fn row_of(rows: &mut Vec<String>, name: String) -> usize {
    rows.iter().position(|r| *r == name).unwrap_or_else(|| {
        rows.push(name);
        rows.len() - 1
    })
}

fn lane(r: &Report) -> Lane {
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    let mut faults = Vec::new();
    let mut reported = Vec::new();
    for f in &r.faults {
        let row = row_of(&mut rows, format!("pair {}", f.pair));
        faults.push(s(f.at_ms));
        let serving_from = if f.interrupted {
            bars.push(Bar {
                row,
                from: s(f.at_ms),
                to: f.restored_at_ms.map(s),
                // The caption carries the figure: a label would sit on the fault lines.
                label: String::new(),
                kind: BarKind::Outage,
            });
            f.restored_at_ms
        } else {
            Some(f.at_ms)
        };
        if let Some(from) = serving_from
            && f.duplex_at_ms.is_none_or(|d| d > from)
        {
            bars.push(Bar {
                row,
                from: s(from),
                to: f.duplex_at_ms.map(s),
                label: String::new(),
                kind: BarKind::Simplex,
            });
        }
    }
    let mut open: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for e in &r.events {
        let t = s(e.t_ms);
        match &e.what {
            What::Note(Note::StepStarted {
                unit,
                host,
                phase,
                action,
                op,
                ..
            }) => {
                let row = row_of(&mut rows, unit.to_string());
                let what = if *action == Action::for_phase(*phase) {
                    phase.as_str()
                } else {
                    action.label()
                };
                open.insert((unit.to_string(), *op), bars.len());
                bars.push(Bar {
                    row,
                    from: t,
                    to: None,
                    label: format!("{what} @{host}"),
                    kind: BarKind::Open,
                });
            }
            What::Note(Note::StepSucceeded { unit, op, .. }) => {
                if let Some(i) = open.remove(&(unit.to_string(), *op)) {
                    bars[i].to = Some(t);
                    bars[i].kind = BarKind::Ok;
                }
            }
            What::Note(Note::StepFailed { unit, op, .. }) => {
                if let Some(i) = open.remove(&(unit.to_string(), *op)) {
                    bars[i].to = Some(t);
                    bars[i].kind = BarKind::Failed;
                }
            }
            What::Event(Event::FaultReported { .. } | Event::HostDown { .. }) => reported.push(t),
            _ => {}
        }
    }
    let figure = |v: Option<Millis>, none: &str| v.map_or(none.to_owned(), secs);
    let title = format!(
        "{}: fault → ACT serving {} · fault → duplex {}",
        r.policy,
        figure(r.mttr_ms, "never"),
        figure(r.time_to_duplex_ms, "never"),
    );
    Lane {
        title,
        rows,
        bars,
        faults,
        reported,
    }
}

fn draw_timelines(reports: &[Report]) -> Result<String, BenchError> {
    let lanes: Vec<Lane> = reports.iter().map(lane).collect();
    let times = || {
        lanes.iter().flat_map(|l| {
            l.bars
                .iter()
                .flat_map(|b| [Some(b.from), b.to])
                .flatten()
                .chain(l.faults.iter().copied())
        })
    };
    let first = times().fold(f64::INFINITY, f64::min);
    let last = times().fold(f64::NEG_INFINITY, f64::max);
    let (first, last) = if first.is_finite() && last > first {
        (first, last)
    } else {
        (0.0, 1.0)
    };
    let span = last - first;
    let x0 = (first - 0.03 * span).max(0.0);
    // Room on the right for the legend; bars without an end run to `open_end`.
    let open_end = last + 0.04 * span;
    let x1 = last + 0.3 * span;
    let rows = lanes.iter().map(|l| l.rows.len()).max().unwrap_or(1).max(1);
    let panel = 110 + 42 * u32::try_from(rows).unwrap_or(20);
    let height = panel * u32::try_from(lanes.len()).unwrap_or(3);
    render(TIMELINES_SVG, (1100, height), |root| {
        let panels = root.split_evenly((lanes.len(), 1));
        for (lane, area) in lanes.iter().zip(&panels) {
            draw_lane(area, lane, (x0, x1), open_end, rows)?;
        }
        Ok(())
    })
}

fn draw_lane(
    area: &Area<'_>,
    lane: &Lane,
    (x0, x1): (f64, f64),
    open_end: f64,
    rows: usize,
) -> Result<(), DrawError> {
    let n = count(rows);
    // Row 0 on top, at y = n; the last row at y = 1. Unit-spaced ticks land on the rows.
    let centre = |row: usize| n - count(row);
    let (y0, y1) = (0.4, n + 0.6);
    let names = lane.rows.clone();
    let mut chart = ChartBuilder::on(area)
        .caption(&lane.title, font(17))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows)
        .y_label_formatter(&|y: &f64| row_name(&names, n, *y))
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .x_desc("virtual time (s)")
        .label_style(font(13))
        .draw()?;
    for kind in BarKind::ALL {
        let bars: Vec<&Bar> = lane.bars.iter().filter(|b| b.kind == kind).collect();
        if bars.is_empty() {
            continue;
        }
        let color = kind.color();
        chart
            .draw_series(bars.iter().map(|b| {
                let y = centre(b.row);
                let to = b.to.unwrap_or(open_end).max(b.from + (x1 - x0) / 400.0);
                Rectangle::new([(b.from, y - 0.34), (to, y + 0.34)], color.filled())
            }))?
            .label(kind.legend())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    let label_style = font(12).pos(Pos::new(HPos::Left, VPos::Center));
    let nudge = (x1 - x0) / 250.0;
    chart.draw_series(lane.bars.iter().filter(|b| !b.label.is_empty()).map(|b| {
        Text::new(
            b.label.clone(),
            (b.from + nudge, centre(b.row)),
            label_style.clone(),
        )
    }))?;
    for (times, color, legend) in [
        (&lane.faults, FAULT, "fault"),
        (&lane.reported, REPORTED, "reported to the engine"),
    ] {
        if times.is_empty() {
            continue;
        }
        chart
            .draw_series(
                times
                    .iter()
                    .map(|&t| PathElement::new(vec![(t, y0), (t, y1)], color.stroke_width(2))),
            )?
            .label(legend)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(font(12))
        .draw()?;
    Ok(())
}

/// The name of the row at tick `y` (rows sit on whole numbers, the first one at `n`).
fn row_name(names: &[String], n: f64, y: f64) -> String {
    let r = y.round();
    if (y - r).abs() > 0.01 || r < 1.0 || r > n {
        return String::new();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let row = (n - r) as usize;
    names.get(row).cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// (b) MTTR per policy
// ---------------------------------------------------------------------------------------------

/// Which summary of a policy a bar shows.
type PickStats = fn(&crate::PolicyFigures) -> Option<&Stats>;

fn draw_mttr(cmp: &PolicyComparison) -> Result<String, BenchError> {
    let n = cmp.policies.len().max(1);
    let top = cmp
        .policies
        .iter()
        .flat_map(|p| [p.mttr_ms.as_ref(), p.duplex_ms.as_ref()])
        .flatten()
        .map(|st| st.max)
        .fold(0.0, f64::max)
        / 1000.0;
    let top = if top > 0.0 { top * 1.18 } else { 1.0 };
    let names: Vec<String> = cmp
        .policies
        .iter()
        .map(|p| match &p.mttr_ratio {
            Some(_) if p.policy == Policy::Escalation => format!("{} (baseline)", p.policy),
            Some(r) if r.median < 0.1 => format!("{} ({:.3}× MTTR)", p.policy, r.median),
            Some(r) => format!("{} ({:.2}× MTTR)", p.policy, r.median),
            None => p.policy.to_string(),
        })
        .collect();
    let reps = cmp.repetitions.len();
    let caption = if cmp.jitter > 0.0 {
        format!(
            "{}: median over {reps} repetitions, durations ×{:.2}..×{:.2}; whiskers p10–p90",
            cmp.scenario,
            1.0 - cmp.jitter,
            1.0 + cmp.jitter
        )
    } else {
        format!("{}: scenario durations, no jitter", cmp.scenario)
    };
    render(MTTR_SVG, (900, 560), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, font(17))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..count(n) + 0.5, 0.0..top)?;
        // Policy i sits on x = i + 1: unit-spaced ticks land on the policies.
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x: &f64| {
                let r = x.round();
                if (x - r).abs() > 0.01 || r < 1.0 {
                    return String::new();
                }
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let i = r as usize - 1;
                names.get(i).cloned().unwrap_or_default()
            })
            .y_label_formatter(&|y: &f64| format!("{y:.0}"))
            .y_desc("seconds (virtual)")
            .label_style(font(13))
            .draw()?;
        let series: [(&str, RGBColor, f64, PickStats); 2] = [
            ("fault → ACT serving (MTTR)", MTTR_BAR, 0.62, |p| {
                p.mttr_ms.as_ref()
            }),
            ("fault → duplex again", DUPLEX_BAR, 1.02, |p| {
                p.duplex_ms.as_ref()
            }),
        ];
        for (legend, color, offset, pick) in series {
            let bars: Vec<(f64, Stats)> = cmp
                .policies
                .iter()
                .enumerate()
                .filter_map(|(i, p)| pick(p).map(|st| (count(i) + offset, *st)))
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, st)| {
                    Rectangle::new([(*x, 0.0), (x + 0.36, st.median / 1000.0)], color.filled())
                }))?
                .label(legend)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
            chart.draw_series(
                bars.iter()
                    .filter(|(_, st)| st.spread() > 0.0)
                    .map(|(x, st)| {
                        ErrorBar::new_vertical(
                            x + 0.18,
                            st.p10 / 1000.0,
                            st.median / 1000.0,
                            st.p90 / 1000.0,
                            BLACK.stroke_width(1),
                            10,
                        )
                    }),
            )?;
            let above = font(12).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(bars.iter().map(|(x, st)| {
                Text::new(
                    format!("{:.1} s", st.median / 1000.0),
                    (x + 0.18, st.p90.max(st.median) / 1000.0 + top * 0.015),
                    above.clone(),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(font(13))
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// (c) storm recovery curve
// ---------------------------------------------------------------------------------------------

fn draw_storm(st: &StormReport) -> Result<String, BenchError> {
    let total = count(st.pairs);
    let lowest = count(st.min_serving.min(st.min_duplex));
    let pad = ((total - lowest) / 10.0).max(1.0);
    let (y0, y1) = ((lowest - pad).max(0.0), total + pad);
    // Up to a while after the last change (the run itself goes on until probation timers
    // expire, long after everything is back).
    let last_change = st.curve.last().map_or(0, |p| p.t_ms).max(1_000);
    let end = s(last_change) * 1.5;
    let (x0, x1) = (-0.08 * end, end);
    let step = |value: fn(&crate::CurvePoint) -> usize| -> Vec<(f64, f64)> {
        let mut points = vec![(x0, total)];
        let mut last = total;
        for p in &st.curve {
            let t = s(p.t_ms);
            let v = count(value(p));
            points.push((t, last));
            points.push((t, v));
            last = v;
        }
        points.push((x1, last));
        points
    };
    let caption = format!(
        "storm: {} pairs on {} hosts, a rack of {} fails at t = 0 ({} units lost)",
        st.pairs, st.hosts, st.rack, st.lost_units
    );
    render(STORM_SVG, (900, 520), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, font(17))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x: &f64| format!("{x:.0}"))
            .x_desc("virtual time after the rack failed (s)")
            .y_desc("pairs")
            .y_label_formatter(&|y: &f64| format!("{y:.0}"))
            .label_style(font(13))
            .draw()?;
        // Serving underneath and wider: where both lines run at the top, both stay visible.
        for (legend, color, width, value) in [
            (
                "pairs with an ACT serving",
                SERVING_LINE,
                5,
                (|p| p.serving) as fn(&crate::CurvePoint) -> usize,
            ),
            ("pairs running duplex", DUPLEX_LINE, 2, |p| p.duplex),
        ] {
            chart
                .draw_series(LineSeries::new(step(value), color.stroke_width(width)))?
                .label(legend)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(width))
                });
        }
        let note = font(12).pos(Pos::new(HPos::Left, VPos::Center));
        let gap = (x1 - x0) / 100.0;
        let notes = [
            (
                st.all_serving_after_ms,
                st.min_serving,
                "every pair serving again",
                0.35,
            ),
            (
                st.all_duplex_after_ms,
                st.min_duplex,
                "every pair duplex again",
                0.7,
            ),
        ];
        chart.draw_series(notes.iter().filter_map(|(at, low, what, up)| {
            let at = (*at)?;
            let y = count(*low) + (total - count(*low)) * up;
            Some(Text::new(
                format!("{what} at +{:.1} s", s(at)),
                (s(at) + gap, y),
                note.clone(),
            ))
        }))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(font(13))
            .draw()?;
        Ok(())
    })
}
