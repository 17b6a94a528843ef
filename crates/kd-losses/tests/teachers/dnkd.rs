//! Runner of `dnkd.json`: kNN datastore teacher + decoupled KD.
//!
//! Every case: the datastore from `datastore_keys` / `datastore_values`, the exact index, the
//! config as given; checks the neighbours (indices and values exactly; distances, weights,
//! kNN and teacher probabilities at the README's f32 tolerance), `per_row`,
//! `loss_mean`, `loss_sum`, `grad_student_logits` and the `tckd` / `nckd` / `ce` extras. The
//! same search through an IVF index probing every list must give identical neighbours.

use burn::tensor::{Device, Tensor};
use kd_losses::Reduction;
use kd_losses::teachers::dnkd::{
    Datastore, DnkdBatch, DnkdConfig, ExactIndex, IvfConfig, IvfIndex, NeighbourIndex,
};
use serde_json::Value;

use crate::common::json::{flat, floats, host, ints, mask};
use crate::{Report, Tol, int_values};

pub fn check(doc: &Value, device: &Device, r: &mut Report) {
    for case in doc["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("case name");
        if let Err(e) = check_case(case, name, device, r) {
            r.fail(name, "forward", e);
        }
    }
}

fn check_case(case: &Value, name: &str, device: &Device, r: &mut Report) -> Result<(), String> {
    let (inp, out) = (&case["inputs"], &case["outputs"]);
    let config: DnkdConfig =
        serde_json::from_value(case["config"].clone()).map_err(|e| format!("config: {e}"))?;
    let dnkd = config.init().map_err(|e| e.to_string())?;

    let (keys, shape) = flat(&inp["datastore_keys"]);
    let keys: Vec<f32> = keys.into_iter().map(|x| x as f32).collect();
    let values: Vec<u32> = int_values(&inp["datastore_values"])
        .into_iter()
        .map(|v| u32::try_from(v).map_err(|e| format!("datastore value {v}: {e}")))
        .collect::<Result<_, _>>()?;
    let store = Datastore::from_rows(shape[1], keys, values).map_err(|e| e.to_string())?;

    let student: Tensor<2> = floats(&inp["student_logits"], device).require_grad();
    let query: Tensor<2> = floats(&inp["query_hidden"], device);
    let mut batch = DnkdBatch::new(query.clone(), student.clone(), ints(&inp["labels"], device));
    if !inp["mask"].is_null() {
        batch = batch.with_mask(mask(&inp["mask"], device));
    }
    if !inp["model_logits"].is_null() {
        batch = batch.with_model_logits(floats(&inp["model_logits"], device));
    }
    let res =
        dnkd.forward(&store, &ExactIndex, batch, Reduction::Mean).map_err(|e| e.to_string())?;

    // Neighbours: integers exactly, floats at f32 tolerance.
    let extras = &out["extras"];
    let knn = &res.knn;
    let got_idx: Vec<i64> = knn.neighbours().indices().iter().map(|&j| j as i64).collect();
    r.check_ints(name, "neighbor_indices", &got_idx, &int_values(&extras["neighbor_indices"]));
    let got_val: Vec<i64> = knn.values().iter().map(|&v| i64::from(v)).collect();
    r.check_ints(name, "neighbor_values", &got_val, &int_values(&extras["neighbor_values"]));
    let floats_of = |f: &str| flat(&extras[f]).0;
    // README tolerances: f32 relative 1e-4 / absolute 1e-5, the absolute part scaled by the
    // largest entry in the `peaked*` and `large*` cases and for the distances (f32 sums of
    // squares).
    let scaled_case = name.starts_with("peaked") || name.starts_with("large");
    let check_f = |r: &mut Report, field: &str, got: &[f64], want: &[f64]| {
        let tol = if scaled_case || field == "neighbor_distances" {
            Tol::f32_scaled(want)
        } else {
            Tol::new(1e-4, 1e-5)
        };
        r.check(name, field, got, want, tol);
    };
    check_f(
        r,
        "neighbor_distances",
        knn.neighbours().distances(),
        &floats_of("neighbor_distances"),
    );
    check_f(r, "neighbor_weights", knn.weights(), &floats_of("neighbor_weights"));
    check_f(r, "knn_probs", &host(res.knn_probs.clone()), &floats_of("knn_probs"));
    check_f(r, "teacher_probs", &host(res.teacher_probs.clone()), &floats_of("teacher_probs"));

    // An IVF index that probes every list finds exactly the same neighbours.
    let nlist = store.len().min(4);
    let ivf = IvfIndex::build(&store, &IvfConfig::new().with_nlist(nlist).with_nprobe(nlist))
        .map_err(|e| e.to_string())?;
    let q = host(query).into_iter().map(|x| x as f32).collect::<Vec<_>>();
    let via_ivf = ivf.search(&store, &q, config.k).map_err(|e| e.to_string())?;
    let ivf_idx: Vec<i64> = via_ivf.indices().iter().map(|&j| j as i64).collect();
    r.check_ints(name, "neighbor_indices (ivf, nprobe = nlist)", &ivf_idx, &got_idx);

    // Loss values, extras and the gradient of loss_mean.
    let per_row = host(res.per_row.clone());
    check_f(r, "per_row", &per_row, &flat(&out["per_row"]).0);
    check_f(r, "loss_mean", &host(res.loss.clone()), &flat(&out["loss_mean"]).0);
    check_f(r, "loss_sum", &host(res.per_row.clone().sum()), &flat(&out["loss_sum"]).0);
    for field in ["tckd", "nckd", "ce"] {
        match res.extra(field) {
            Some(t) => check_f(r, field, &host(t.clone()), &floats_of(field)),
            None => r.fail(name, field, "not reported"),
        }
    }
    let grads = res.loss.backward();
    let grad = student.grad(&grads).ok_or("no gradient w.r.t. student_logits")?;
    check_f(r, "grad_student_logits", &host(grad), &flat(&out["grad_student_logits"]).0);
    Ok(())
}
