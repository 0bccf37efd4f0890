//! The leakage guard: a plan whose evaluation scores a model on rows it
//! may have been fitted on says so, by the plan's structure alone.
//!
//! An evaluation is an aggregator; the model it scores is the first
//! estimator upstream of it through its single inputs (the stage that
//! wrote its predictions): one that applies a model (`model =
//! "stage:FIT"`) scores `FIT`'s model on its own input rows, one that fits
//! and writes rows scores its own model on its training rows. Each side's
//! rows are traced back through single-input stages to where they meet:
//!
//! * through two different named outputs of one stage: held out, since
//!   every row goes to one output;
//! * along the same path: the rows the model was fitted on (in sample);
//! * through different stages (two `split` stages, say): they may
//!   overlap, and nothing in the plan says otherwise.
//!
//! A stage marked `in_sample = true` scores in sample on purpose and is
//! not warned about.

use wasmpipe_runtime::StageKind;

use crate::plan::{InputRef, LockedPipeline, LockedStage, ModelRef};

/// One step back along a chain of rows: the stage (or location) they
/// come from, and the named output they were read through.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    from: String,
    output: Option<String>,
}

/// Where the rows of `input` come from, nearest first: through every
/// stage with a single input, up to a location or a stage that joins
/// several.
fn chain(plan: &LockedPipeline, input: &InputRef) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut at = input.clone();
    // (A plan has no cycles; the bound keeps a malformed one finite.)
    for _ in 0..=plan.stages.len() {
        match at {
            InputRef::Location { url } => {
                steps.push(Step { from: url, output: None });
                break;
            }
            InputRef::Stage { stage, output } => {
                steps.push(Step { from: stage.clone(), output });
                match plan.stages.iter().find(|s| s.name == stage).map(|s| s.inputs.as_slice()) {
                    Some([only]) => at = only.clone(),
                    _ => break,
                }
            }
        }
    }
    steps
}

/// What an evaluation scores: the stage that wrote the predictions, and
/// the fitting stage whose model they come from.
fn scored<'a>(plan: &'a LockedPipeline, eval: &'a LockedStage) -> Option<(&'a LockedStage, &'a LockedStage)> {
    let mut at = eval;
    for _ in 0..plan.stages.len() {
        let [InputRef::Stage { stage, .. }] = at.inputs.as_slice() else { return None };
        at = plan.stages.iter().find(|s| &s.name == stage)?;
        if at.kind == StageKind::Estimator {
            return match &at.model {
                None => Some((at, at)),
                Some(ModelRef::Stage { stage: fit }) => Some((at, plan.stages.iter().find(|s| &s.name == fit)?)),
                // A model from elsewhere: what it was fitted on is not in
                // this plan.
                Some(_) => None,
            };
        }
    }
    None
}

/// The evaluations of `plan` that may score a model on rows it was
/// fitted on: `(evaluation stage, what to tell its operator)`.
pub(crate) fn warnings(plan: &LockedPipeline) -> Vec<(String, String)> {
    let mut said = Vec::new();
    for eval in plan.stages.iter().filter(|s| s.kind == StageKind::Aggregator && !s.in_sample) {
        let Some((predict, fit)) = scored(plan, eval) else { continue };
        let ([rows], [fitted]) = (predict.inputs.as_slice(), fit.inputs.as_slice()) else { continue };
        let (rows, fitted) = (chain(plan, rows), chain(plan, fitted));
        let Some((i, j)) =
            rows.iter().enumerate().find_map(|(i, r)| fitted.iter().position(|f| f.from == r.from).map(|j| (i, j)))
        else {
            continue;
        };
        let (meet, a, b) = (&rows[i].from, &rows[i].output, &fitted[j].output);
        if let (Some(a), Some(b)) = (a, b)
            && a != b
        {
            continue; // held out: two named outputs of one stage
        }
        let model = if predict.name == fit.name {
            format!("its own model (stage {:?} fits it and writes these rows)", fit.name)
        } else {
            format!("the model of stage {:?}", fit.name)
        };
        let message = if rows[..i] == fitted[..j] {
            let which = if a == b { "the rows" } else { "some of the rows" };
            format!(
                "stage {:?} scores {model} on {which} it was fitted on (in sample): its metrics say little about unseen rows\n  hint: score held-out rows (split once with named outputs: `outputs = [\"train\", \"test\"]`, `route = \"split\"`), or mark the stage `in_sample = true`",
                eval.name
            )
        } else {
            let path = |steps: &[Step]| {
                let name = |s: &Step| s.output.as_ref().map_or_else(|| s.from.clone(), |o| format!("{}.{o}", s.from));
                steps.iter().map(name).collect::<Vec<_>>()
            };
            format!(
                "stage {:?} scores {model} on rows that may overlap its training rows: both come from {meet:?}, through different stages ({} and {}), and nothing says they are disjoint\n  hint: split once, in one stage with named outputs (`outputs = [\"train\", \"test\"]`, `route = \"split\"`), and read `stage:NAME.train` and `stage:NAME.test`; or mark the stage `in_sample = true`",
                eval.name,
                path(&rows[..i]).join(" <- "),
                path(&fitted[..j]).join(" <- "),
            )
        };
        said.push((eval.name.clone(), message));
    }
    said
}
