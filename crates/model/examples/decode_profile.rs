//! Times the pieces of one decode step of a 4-layer Qwen2.5-0.5B-shaped random model (lm_head, projections, norm, a whole step): `cargo run --release -p afterburner-model --example decode_profile`.

use std::time::Instant;

use afterburner_model::bench::random_model;
use afterburner_model::{DType, Device, LogitsOutput, ModelConfig, Tensor};

fn time<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!(
        "{label:40} {:8.3} ms",
        start.elapsed().as_secs_f64() / reps as f64 * 1e3
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let mut config = ModelConfig::qwen2_5_0_5b();
    config.num_hidden_layers = 4;
    let model = random_model(&config, DType::F32, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (1, 1, 896), &dev)?;
    time("lm_head", 5, || model.lm_head.forward(&x).unwrap());
    let w = model.lm_head.dense_weight()?;
    time("lm_head weight sum (pure read)", 5, || w.sum_all().unwrap());
    let x2 = x.reshape((1, 896))?;
    for round in 0..2 {
        time(&format!("lm_head, Linear::forward ({round})"), 5, || {
            model.lm_head.forward(&x).unwrap()
        });
        time(&format!("lm_head, candle gemm ({round})"), 5, || {
            w.matmul(&x2.t().unwrap()).unwrap()
        });
    }
    let x8 = Tensor::randn(0f32, 1.0, (8, 1, 896), &dev)?;
    let g = &model.layers[0].mlp.gate_proj;
    let x8_2 = x8.reshape((8, 896))?;
    let g_weight = g.dense_weight()?;
    time("mlp gate, 8 rows, Linear::forward", 20, || {
        g.forward(&x8).unwrap()
    });
    time("mlp gate, 8 rows, candle gemm", 20, || {
        g_weight.matmul(&x8_2.t().unwrap()).unwrap()
    });
    let l = &model.layers[0];
    time("q_proj", 20, || l.self_attn.q_proj.forward(&x).unwrap());
    time("mlp gate", 20, || l.mlp.gate_proj.forward(&x).unwrap());
    time("mlp down", 20, || {
        l.mlp
            .down_proj
            .forward(&Tensor::randn(0f32, 1.0, (1, 1, 4864), &dev).unwrap())
            .unwrap()
    });
    time("norm", 20, || l.input_layernorm.forward(&x).unwrap());
    let mut cache = model.new_cache(1, 100)?;
    let prompt = Tensor::new(&[[1u32, 2, 3, 4, 5, 6, 7, 8]], &dev)?;
    model.forward(&prompt, None, Some(&mut cache), LogitsOutput::Last)?;
    let tok = Tensor::new(&[[9u32]], &dev)?;
    time("decode step (4 layers + head)", 5, || {
        let mut c = cache.clone();
        model
            .forward(&tok, None, Some(&mut c), LogitsOutput::Last)
            .unwrap()
    });
    time("full forward, 1 token, no cache", 5, || {
        model.forward(&tok, None, None, LogitsOutput::Last).unwrap()
    });
    Ok(())
}
