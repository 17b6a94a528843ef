//! Parameters by module path (`h.0.attn.c_attn.weight`): the key under which kd-train stores
//! weights, gradients and optimizer state, so that a checkpoint does not depend on burn's
//! per-process parameter ids.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};

/// Path bookkeeping shared by the visitors and mappers below.
#[derive(Debug, Default)]
struct PathStack {
    names: Vec<String>,
    containers: Vec<String>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }
    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }
    /// `a.b.c` of the parameter being visited (the last name is the field name).
    fn path(&self) -> String {
        self.names.join(".")
    }
    /// Whether any enclosing module's type name contains `needle` (e.g. `Embedding`).
    fn inside(&self, needle: &str) -> bool {
        self.containers.iter().any(|c| c.contains(needle))
    }
}

/// Facts about one float parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Module path, e.g. `h.0.attn.c_attn.weight`.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Whether it lives inside an embedding module (`Struct:Embedding`).
    pub in_embedding: bool,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether AdamW decays this parameter: matrices only (no biases, no norm gains), and not
    /// embeddings when `decay_embeddings` is false. This is the Hugging Face grouping
    /// (`bias` and `LayerNorm.weight` undecayed) plus the common no-decay-on-embeddings rule.
    pub fn decays(&self, decay_embeddings: bool) -> bool {
        self.shape.len() >= 2 && (decay_embeddings || !self.in_embedding)
    }
}

struct InfoCollector {
    stack: PathStack,
    out: Vec<ParamInfo>,
}

impl ModuleVisitor for InfoCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(ParamInfo {
            path: self.stack.path(),
            shape: param.lazy_shape().dims::<D>().to_vec(),
            in_embedding: self.stack.inside("Embedding"),
        });
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn param_infos<M: Module>(module: &M) -> Vec<ParamInfo> {
    let mut v = InfoCollector { stack: PathStack::default(), out: Vec::new() };
    module.visit(&mut v);
    v.out
}

struct ValueCollector {
    stack: PathStack,
    out: BTreeMap<String, TensorData>,
}

impl ModuleVisitor for ValueCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().inner().into_data().convert::<f32>();
        self.out.insert(self.stack.path(), data);
    }
}

/// Every float parameter's values (as `f32`) by path.
pub fn param_values<M: Module>(module: &M) -> BTreeMap<String, TensorData> {
    let mut v = ValueCollector { stack: PathStack::default(), out: BTreeMap::new() };
    module.visit(&mut v);
    v.out
}

struct ValueLoader<'a> {
    stack: PathStack,
    values: &'a BTreeMap<String, TensorData>,
    errors: Vec<String>,
}

impl ModuleMapper for ValueLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let (id, tensor, mapper) = param.consume();
        let Some(data) = self.values.get(&path) else {
            self.errors.push(format!("missing tensor `{path}`"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.dims().to_vec();
        if data.shape().to_vec() != shape {
            self.errors.push(format!(
                "tensor `{path}` has shape {:?}, the model expects {shape:?}",
                data.shape().to_vec()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let require_grad = tensor.is_require_grad();
        let mut loaded = Tensor::<D>::from_data(data.clone(), &device);
        if require_grad {
            loaded = loaded.require_grad();
        }
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Replaces every float parameter of `module` by the value stored under its path.
///
/// # Errors
/// The list of missing or misshapen tensors, when any.
pub fn load_param_values<M: Module>(
    module: M,
    values: &BTreeMap<String, TensorData>,
) -> std::result::Result<M, Vec<String>> {
    let mut loader = ValueLoader { stack: PathStack::default(), values, errors: Vec::new() };
    let module = module.map(&mut loader);
    if loader.errors.is_empty() { Ok(module) } else { Err(loader.errors) }
}

struct Trainable {
    device: burn::tensor::Device,
}

impl ModuleMapper for Trainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        // Through the plain device and back: a fresh leaf that tracks gradients, whatever graph
        // the initialiser's operations left on it.
        let leaf = Tensor::<D>::from_inner(tensor.inner().to_device(&self.device.clone().inner()))
            .to_device(&self.device)
            .require_grad();
        Param::from_mapped_value(id, leaf, mapper)
    }
}

/// Every float parameter of `module` as a gradient-tracking leaf on the autodiff `device`
/// (parameters built by tensor operations on an autodiff device are not leaves).
pub fn make_trainable<M: Module>(module: M, device: &burn::tensor::Device) -> M {
    module.map(&mut Trainable { device: device.clone().autodiff() })
}

/// Gradients summed over micro-batches, flattened, on the plain (non-autodiff) device.
#[derive(Debug, Default, Clone)]
pub struct GradAccumulator {
    grads: BTreeMap<String, Tensor<1>>,
}

struct GradCollector<'a> {
    stack: PathStack,
    grads: &'a Gradients,
    acc: &'a mut BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let n = g.shape().num_elements();
            let g = g.reshape([n]);
            let path = self.stack.path();
            let summed = match self.acc.remove(&path) {
                Some(prev) => prev.add(g),
                None => g,
            };
            self.acc.insert(path, summed);
        }
    }
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of `module`'s parameters from one backward pass.
    pub fn add<M: Module>(&mut self, module: &M, grads: &Gradients) {
        let mut c = GradCollector { stack: PathStack::default(), grads, acc: &mut self.grads };
        module.visit(&mut c);
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f64) {
        for g in self.grads.values_mut() {
            *g = g.clone().mul_scalar(factor);
        }
    }

    /// Global L2 norm over all gradients (one host read).
    pub fn global_norm(&self) -> f64 {
        let mut total: Option<Tensor<1>> = None;
        for g in self.grads.values() {
            let sq = g.clone().square().sum(); // [1]
            total = Some(match total {
                Some(t) => t.add(sq),
                None => sq,
            });
        }
        total.map_or(0.0, |t| f64::from(t.into_scalar::<f32>()).sqrt())
    }

    /// The flattened gradient of `path`, if that parameter received one.
    pub fn get(&self, path: &str) -> Option<&Tensor<1>> {
        self.grads.get(path)
    }

    /// Whether no gradient was collected.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{EmbeddingConfig, LinearConfig};
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Tiny {
        emb: burn::nn::Embedding,
        proj: burn::nn::Linear,
    }

    fn tiny(device: &Device) -> Tiny {
        Tiny {
            emb: EmbeddingConfig::new(5, 3).init(device),
            proj: LinearConfig::new(3, 4).init(device),
        }
    }

    #[test]
    fn paths_and_decay_groups() {
        let infos = param_infos(&tiny(&Device::flex()));
        let by_path: BTreeMap<_, _> = infos.iter().map(|i| (i.path.as_str(), i)).collect();
        assert_eq!(
            by_path.keys().copied().collect::<Vec<_>>(),
            ["emb.weight", "proj.bias", "proj.weight"]
        );
        assert!(!by_path["emb.weight"].decays(false));
        assert!(by_path["emb.weight"].decays(true));
        assert!(by_path["proj.weight"].decays(false));
        assert!(!by_path["proj.bias"].decays(true));
    }

    #[test]
    fn values_round_trip_by_path() {
        let device = Device::flex();
        let a = tiny(&device);
        let b = tiny(&device);
        let values = param_values(&a);
        let b = load_param_values(b, &values).unwrap();
        assert_eq!(param_values(&b), values);
        let mut broken = values.clone();
        broken.remove("proj.bias");
        let err = load_param_values(tiny(&device), &broken).unwrap_err();
        assert_eq!(err, ["missing tensor `proj.bias`"]);
    }
}
