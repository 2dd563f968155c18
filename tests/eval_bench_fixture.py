"""A small OpenMedReason-Bench for the evaluation tests: real images, real Parquet, real rubric.

Verified instances (``tests/dataset_factory.py``) go through the pipeline's build step
(``make_dataset`` → ``openmedreason.build.dataset.build_dataset``: the released schema with HF
features), then the rubric units are cut from the traces by the PKR package's offline extractor
(``openmedreason.bench.rubric.fill_dataset``), as ``omr rubric`` does.
The traces follow the offline engine's section layout (Perception / Clinical context /
Interpretation and medical knowledge / Answer justification). Items are spread over a few
articles so the clustered bootstrap has clusters to resample.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "corpus" / "medical" / "images"

#: (image, modality, category, family, stem, options, answer index, finding, knowledge)
CASES = [
    ("bronchiolitis_chest_xray.jpg", "X-ray", "findings", "Perception",
     "Which imaging modality was used to acquire this image?",
     ["Plain radiography", "Computed tomography", "Magnetic resonance imaging", "Ultrasonography"], 0,
     "a frontal projection of the chest with overlapping bony and soft-tissue shadows",
     "Projection images that superimpose all tissues along the beam path are typical of plain radiography."),
    ("pulmonary_embolism_ctpa.jpg", "CT", "diagnosis", "Diagnosis",
     "What is the most likely diagnosis?",
     ["Pulmonary embolism", "Aortic dissection", "Lobar pneumonia", "Pneumothorax"], 0,
     "a filling defect inside the contrast-opacified pulmonary artery",
     "An intraluminal filling defect in an opacified pulmonary artery is the defining sign of acute pulmonary embolism."),
    ("schistocytes.jpg", "histology", "findings", "Perception",
     "Which abnormal cells are shown in this blood smear?",
     ["Target cells", "Schistocytes", "Spherocytes", "Sickle cells"], 1,
     "fragmented red cells with sharp angular edges and helmet shapes",
     "Fragmented red cells with angular edges are schistocytes, produced by mechanical shearing in microangiopathy."),
    ("smudge_cells_cll.jpg", "histology", "diagnosis", "Diagnosis",
     "Which condition is most consistent with this smear?",
     ["Acute myeloid leukaemia", "Iron deficiency anaemia", "Chronic lymphocytic leukaemia", "Malaria"], 2,
     "many small mature lymphocytes and several crushed smudge cells",
     "Numerous small mature lymphocytes with smudge cells are characteristic of chronic lymphocytic leukaemia."),
    ("retina.jpg", "photo", "anatomy", "Perception",
     "Which structure is shown in this photograph?",
     ["Tympanic membrane", "Oral mucosa", "Skin surface", "Retina"], 3,
     "an orange fundus with the optic disc and branching retinal vessels",
     "An optic disc with vessels radiating from it identifies a fundus photograph of the retina."),
    ("uip_honeycomb_fibrosis.jpg", "CT", "differential", "Diagnosis",
     "Which pattern of lung disease is shown?",
     ["Organising pneumonia", "Usual interstitial pneumonia", "Sarcoidosis", "Pulmonary oedema"], 1,
     "subpleural basal honeycomb cysts with traction bronchiectasis",
     "Basal subpleural honeycombing with traction bronchiectasis defines the usual interstitial pneumonia pattern."),
    ("hypersegmented_neutrophil.jpg", "histology", "findings", "Perception",
     "Which finding is visible in the central cell?",
     ["Hypersegmented nucleus", "Auer rod", "Toxic granulation", "Dohle body"], 0,
     "a neutrophil whose nucleus has six separate lobes",
     "A neutrophil with six or more nuclear lobes is hypersegmented, a feature of megaloblastic anaemia."),
    ("reed_sternberg_cell.jpg", "histology", "diagnosis", "Diagnosis",
     "Which diagnosis do the large cells suggest?",
     ["Burkitt lymphoma", "Multiple myeloma", "Hodgkin lymphoma", "Metastatic carcinoma"], 2,
     "a large binucleate cell with prominent eosinophilic nucleoli",
     "Large binucleate cells with owl-eye nucleoli are Reed-Sternberg cells, the hallmark of Hodgkin lymphoma."),
]


def trace(finding: str, knowledge: str, letter: str, option: str) -> str:
    return (
        "<think>\n"
        "The task is to name what the image shows, so the image must be examined first.\n\n"
        f"Perception: The image shows {finding}.\n\n"
        "Clinical context: No clinical history is given, so the answer rests on the image findings.\n\n"
        f"Interpretation and medical knowledge: {knowledge}\n\n"
        f"Answer justification: These findings in this image point to {option.lower()}; therefore the answer is {letter}. {option}.\n"
        "</think>\n"
        f"<answer>{letter}</answer>"
    )


def make_bench(tmp_path: Path, n: int = 8, *, rubric: bool = True) -> Path:
    """A dataset folder built by the pipeline's build step with ``n`` test items (``n`` ≤ 8:
    one image per case), two per article; rubric filled offline when asked."""
    import random

    from dataset_factory import make_dataset, make_instance, make_run_with_instances

    if n > len(CASES):
        raise ValueError(f"at most {len(CASES)} items (one distinct image each)")
    rng = random.Random(0)
    instances = []
    for i in range(n):
        img, modality, cat, _fam, stem, options, ans, finding, knowledge = CASES[i]
        art = f"PMC{9000 + i // 2}"
        letter = "ABCD"[ans]
        group = "Radiology" if modality in ("X-ray", "CT") else "Microscopy" if modality == "histology" else "Visible light photography"
        inst = make_instance(iid=f"{art}|F1|-|{cat}|{i}", article_id=art, image=IMAGES / img, category=cat, rng=rng,
                             modality_group=group, modality=modality, stem=stem, options=options, answer=letter)
        instances.append(inst.model_copy(update={"reasoning": trace(finding, knowledge, letter, options[ans])}))
    run = make_run_with_instances(Path(tmp_path), 0, extra=instances, name="eval-run")
    ds = make_dataset(Path(tmp_path), run=run, build={"test_fraction": 1.0})
    if rubric:
        from openmedreason.bench.rubric import fill_dataset

        fill_dataset(ds)
    return ds
