//! Times one batch-1 projection of SmolLM2's MLP shape (`[1536, 576]`) and its LM head
//! (`[49152, 576]`) as f32 [`Linear`]s and as Q4_1 / Q8_0 quantized ones, to tune the kernels of
//! `afterburner_model::quantized`.
//!
//! `cargo run --release -p afterburner-model --example quantized_profile`

use std::sync::Arc;
use std::time::Instant;

use afterburner_model::quantized::QuantizedMatrix;
use afterburner_model::{Device, Linear, LinearWeight, Tensor};
use candle_core::quantized::{GgmlDType, QTensor};

fn time(label: &str, reps: usize, mut f: impl FnMut() -> Tensor) {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    let micros = start.elapsed().as_secs_f64() * 1e6 / reps as f64;
    println!("{label:<40} {micros:>10.1} us");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    for (rows, cols, reps) in [(1536, 576, 2000), (576, 1536, 2000), (49152, 576, 50)] {
        let w = Tensor::randn(0f32, 0.02, (rows, cols), &dev)?;
        for n in [1, 8] {
            let x = Tensor::randn(0f32, 1.0, (n, cols), &dev)?;
            let dense = Linear::new(w.clone(), None);
            time(&format!("[{rows}, {cols}] x {n} f32"), reps, || {
                dense.forward(&x).unwrap()
            });
            for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let q = QTensor::quantize(&w, dtype)?;
                let matrix = QuantizedMatrix::from_qtensor(&q)?.ok_or("unsupported")?;
                let mut linear = Linear::new(w.clone(), None);
                linear.weight = LinearWeight::Quantized(Arc::new(matrix));
                time(&format!("[{rows}, {cols}] x {n} {dtype:?}"), reps, || {
                    linear.forward(&x).unwrap()
                });
            }
        }
    }
    Ok(())
}
