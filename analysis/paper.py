"""The paper's reported numbers (arXiv 2505.14302), to print beside ours."""

from __future__ import annotations

TABLE1: dict[str, dict[str, float]] = {
    "w4a4/int4": {"k": 0.1582, "gamma_N": 0.2186, "gamma_D": 0.0745, "gamma_G": 0.7779},
    "w4a16/int4": {"k": 0.2522, "gamma_N": 0.3589, "gamma_D": 0.1610, "gamma_G": 0.3533},
    "w16a4/int4": {"k": 0.1004, "gamma_N": 0.1816, "gamma_D": 0.0331, "gamma_G": 0.9812},
    "w4a4_fc2a8/int4": {"k": 0.3519, "gamma_N": 0.2637, "gamma_D": 0.0964, "gamma_G": 0.3407},
    "w16a4_fc2a8/int4": {"k": 0.1273, "gamma_N": 0.2347, "gamma_D": 0.0827, "gamma_G": 0.4491},
}
BASE: dict[str, float] = {
    "A": 237.7042,
    "alpha": 0.3022,
    "B": 596.2490,
    "beta": 0.3022,
    "E": 1.9279,
}
BASE_R2 = 0.982

# Relative error of predicted delta (Table 2 and the Table 4 ablation), as fractions.
REL_ERROR: dict[str, dict[str, float]] = {
    "w4a4/int4": {"ours": 0.047, "n_only": 0.085, "no_d": 0.086},
    "w4a16/int4": {"ours": 0.052, "n_only": 0.193, "no_d": 0.138},
}

# Section 6 findings, for the "which trends reproduce" section.
FINDINGS: dict[str, float] = {
    "delta_change_with_n": -0.34,  # 74M -> 595M
    "delta_change_with_d": 0.22,  # 10B -> 100B
    "g_gap_595m_100b": 0.037,  # coarsest minus finest G
    "channel_int4_minus_fp4": -0.015,
    "decomposition_k": 0.906,
    "weight_growth_with_d": 0.43,
    "act_growth_with_d": 0.12,
    "fc2_kurtosis_bf16": 123.0,
    "fc2_kurtosis_w4a4": 89.0,
    "fc2_8bit_reduction_g32": 0.205,
    "fc2_8bit_reduction_g256": 0.429,
}
