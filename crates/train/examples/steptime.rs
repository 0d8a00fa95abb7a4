//! Scratch: time our SFT and GRPO steps only.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let what = args[2].clone();
    let steps: usize = args[3].parse().unwrap();
    let device = afterburner_model::Device::Cpu;
    let mut model =
        afterburner_model::LanguageModel::from_folder(&dir, afterburner_model::DType::F32, &device)
            .unwrap();
    let vocab = model.config().vocab_size as u64;
    let mut rng = afterburner_train::SeededRng::new(1);
    let mut sequence =
        || -> Vec<u32> { (0..256).map(|_| (rng.next_u64() % vocab) as u32).collect() };
    let ids = sequence();
    let group: Vec<Vec<u32>> = (0..4).map(|_| sequence()).collect();
    let lora = afterburner_train::LoraConfig {
        r: 16,
        alpha: 32.0,
        ..afterburner_train::LoraConfig::default()
    };
    if what == "split" {
        let _ad = afterburner_train::lora::Adapters::attach(model.model_mut(), &lora, 0, &device)
            .unwrap();
        let ex = afterburner_train::sft::Tokenized {
            ids: ids.clone(),
            completion_start: 1,
        };
        for _ in 0..steps {
            let t0 = std::time::Instant::now();
            let nll = afterburner_train::sft::completion_nll(&model, &ex).unwrap();
            let t1 = t0.elapsed().as_secs_f64() * 1000.0;
            let g = nll.backward().unwrap();
            let t2 = t0.elapsed().as_secs_f64() * 1000.0;
            drop(g);
            drop(nll);
            let t3 = t0.elapsed().as_secs_f64() * 1000.0;
            println!("fwd {t1:.0} bwd {:.0} drop {:.0}", t2 - t1, t3 - t2);
        }
        return;
    }
    let t = if what == "sft" {
        afterburner_train::time_sft_steps(&mut model, &ids, &lora, steps).unwrap()
    } else {
        afterburner_train::time_grpo_steps(&mut model, &group, &lora, steps).unwrap()
    };
    println!(
        "{what} {:?}",
        t.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
}
#[allow(dead_code)]
fn split() {}
