//! The specs shipped in `models/`, generated once for the whole test binary:
//! the modules that test them (`attention`, `checkpoint`, `models`,
//! `parallel`, `stability`) use these, so each is expanded and its generic
//! code monomorphised once rather than per module.

use nl::nl_model;

nl_model!("models/micro.toml");
nl_model!("models/micro_memory.toml");
nl_model!("models/micro_titans.toml");
nl_model!("models/micro_hebbian.toml");
nl_model!("models/micro_mal.toml");
nl_model!("models/micro_cms4.toml");
nl_model!("models/sensor.toml");
nl_model!("models/sensor_attn.toml");
nl_model!("models/d128_memory.toml");
nl_model!("models/deep.toml");
nl_model!("models/deep_memory.toml");
