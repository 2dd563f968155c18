"""A small, curated biomedical lexicon for the offline (no-LLM) curation engine.

The lexicon is written by hand for this project (no external vocabulary is copied). It is
organised by *vocabulary class*; each class maps a canonical term to the surface forms
(synonyms, abbreviations, adjectives) that mean it in figure captions and citing text.

Vocabulary classes (:data:`VOCAB_CLASSES`)
    ``modality``     imaging / figure modality; every modality belongs to one of the five
                     :data:`openmedreason.taxonomy.MODALITY_GROUPS` (see :data:`MODALITIES`)
    ``anatomy``      organs and body regions, each with a coarse ``region`` (thorax, abdomen,
                     head, …) so that distractors can be chosen from *other* regions
    ``plane``        imaging planes and radiographic projections, each with a ``kind``
                     (``section``: axial/coronal/sagittal; ``projection``: PA/AP/lateral/oblique)
    ``stain``        histological / cytological stains and labelling methods
    ``normal``       cue phrases for a normal appearance ("unremarkable", "no abnormality", …)
    ``abnormal``     cue words for an abnormal appearance (lesion, opacity, carcinoma, …)
    ``laterality``, ``location``, ``size``, ``colour``, ``count``, ``morphology``
                     finding descriptors; the B2 leakage check
                     (:func:`openmedreason.curate.checks.check_leak_finding`) looks for them in
                     perception stems

Matching rules (:func:`scan`, :func:`find_terms`)
    * whole words: a match may not touch a letter or digit on either side;
    * case-insensitive, **except** short all-capital abbreviations (≤ 5 characters, e.g. ``US``,
      ``CT``, ``IF``, ``EM``, ``HE``, ``PA``, ``PET``), which match only in capitals so that the
      English words "us", "if", "he", "pet", "pa" are not read as modalities or planes;
    * a plural ``s``/``es`` is accepted after a word that ends in a letter ("radiographs",
      "masses");
    * longest match first: at each position the longest surface form wins ("CT angiography" is
      CT, not Angiography; "no abnormality" is a *normal* cue, not the abnormal "abnormality");
      matches never overlap;
    * every surface form is mapped to its canonical term; results are de-duplicated and listed
      in order of first appearance.

Modality groups (decisions)
    The five groups are the A2 primary-modality classes. Choices where the grouping is not
    obvious:

    * fundus photograph → **Visible light photography** (it is a colour photograph of the
      retina taken through the pupil; we keep "Fundus photograph" as its own secondary modality
      so that questions can name it);
    * OCT → **Radiology**: a tomographic cross-sectional reconstruction read like ultrasound,
      not a photograph;
    * angiography (catheter / DSA), PET, SPECT and scintigraphy, mammography → Radiology;
      "CT angiography"/CTPA is CT and "MR angiography" is MRI (longest match);
    * endoscopy, dermoscopy, clinical / intra-operative / gross photographs → Visible light
      photography;
    * histology (H&E), immunohistochemistry, immunofluorescence, electron microscopy, light
      microscopy, blood smears and cytology → Microscopy;
    * Western blot / gel → **Visible light photography**: none of the five groups fits well; a
      blot is an image of a physical membrane, not drawn data, so photography is the nearest;
    * bar charts, scatter plots, survival curves, flow charts, forest plots, … → Plots and
      Charts; schematics, diagrams, illustrations → Diagram.

:func:`detect_modality` picks one modality for a text: the canonical modality with the most
mentions, ties broken by the earliest mention; a bare group word (e.g. "micrograph") only
decides the group when no specific modality is named.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

# --------------------------------------------------------------------------------------------
# modalities: canonical -> (group, surface forms)
# --------------------------------------------------------------------------------------------

RAD, MIC, VLP, PLOT, DIAG = "Radiology", "Microscopy", "Visible light photography", "Plots and Charts", "Diagram"

#: canonical modality -> (MODALITY_GROUPS group, surface forms)
MODALITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # radiology
    "CT": (RAD, ("CT", "computed tomography", "computerized tomography", "computerised tomography",
                 "CT scan", "CT image", "CT angiography", "CT angiogram", "CTA", "CTPA",
                 "CT pulmonary angiography", "CT pulmonary angiogram", "HRCT", "high-resolution CT",
                 "contrast-enhanced CT", "enhanced CT", "non-contrast CT", "MDCT", "CBCT",
                 "cone-beam CT", "cone beam CT", "tomogram")),
    "MRI": (RAD, ("MRI", "MR", "magnetic resonance imaging", "magnetic resonance", "MR image",
                  "MR angiography", "MRA", "T1-weighted", "T2-weighted", "T1-weighted image",
                  "T2-weighted image", "FLAIR", "DWI", "diffusion-weighted", "fMRI", "MRCP")),
    "Ultrasound": (RAD, ("ultrasound", "ultrasonography", "sonography", "sonogram", "sonographic",
                         "US", "echocardiography", "echocardiogram", "Doppler", "Doppler ultrasound",
                         "transvaginal ultrasound", "EUS", "endoscopic ultrasound")),
    "X-ray": (RAD, ("X-ray", "X ray", "x-ray radiograph", "radiograph", "radiography", "radiographic",
                    "plain film", "plain radiograph", "chest film", "roentgenogram", "CXR")),
    "Mammography": (RAD, ("mammography", "mammogram", "mammographic")),
    "Angiography": (RAD, ("angiography", "angiogram", "angiographic", "digital subtraction angiography",
                          "DSA", "arteriography", "arteriogram", "venography", "venogram")),
    "PET": (RAD, ("PET", "positron emission tomography", "PET/CT", "PET-CT", "FDG-PET", "FDG PET")),
    "Nuclear medicine": (RAD, ("SPECT", "scintigraphy", "scintigram", "bone scan", "nuclear medicine")),
    "OCT": (RAD, ("OCT", "optical coherence tomography", "OCTA", "OCT angiography")),
    "Fluoroscopy": (RAD, ("fluoroscopy", "fluoroscopic", "barium swallow", "barium enema")),
    # visible light photography
    "Fundus photograph": (VLP, ("fundus photograph", "fundus photography", "fundus image",
                                "fundus photo", "fundoscopy", "funduscopy", "retinal photograph",
                                "color fundus", "colour fundus", "fundus")),
    "Endoscopy": (VLP, ("endoscopy", "endoscopic", "endoscopic image", "colonoscopy", "colonoscopic",
                        "gastroscopy", "bronchoscopy", "bronchoscopic", "laparoscopy", "laparoscopic",
                        "cystoscopy", "arthroscopy", "esophagogastroduodenoscopy", "EGD")),
    "Dermoscopy": (VLP, ("dermoscopy", "dermoscopic", "dermatoscopy", "dermatoscopic")),
    "Clinical photograph": (VLP, ("clinical photograph", "clinical photo", "photograph", "photo",
                                  "intraoperative photograph", "intraoperative view",
                                  "intra-operative photograph", "gross specimen", "gross appearance",
                                  "macroscopic", "macroscopy", "slit-lamp", "slit lamp")),
    "Western blot": (VLP, ("Western blot", "western blotting", "immunoblot", "immunoblotting",
                           "gel electrophoresis", "agarose gel", "SDS-PAGE", "Northern blot",
                           "Southern blot", "gel")),
    # microscopy
    "Histology": (MIC, ("histology", "histological", "histologic", "histopathology",
                        "histopathological", "histopathologic", "H&E", "HE", "hematoxylin and eosin",
                        "haematoxylin and eosin", "hematoxylin-eosin", "haematoxylin-eosin",
                        "biopsy specimen", "tissue section", "photomicrograph")),
    "Immunohistochemistry": (MIC, ("immunohistochemistry", "immunohistochemical", "IHC",
                                   "immunostaining", "immunostain", "immunoperoxidase")),
    "Immunofluorescence": (MIC, ("immunofluorescence", "immunofluorescent", "IF", "fluorescence microscopy",
                                 "confocal microscopy", "confocal", "DAPI", "FISH",
                                 "fluorescence in situ hybridization")),
    "Electron microscopy": (MIC, ("electron microscopy", "electron micrograph", "EM", "TEM",
                                  "transmission electron microscopy", "scanning electron microscopy",
                                  "ultrastructural")),  # not "SEM": usually "standard error of the mean"
    "Light microscopy": (MIC, ("light microscopy", "blood smear", "peripheral blood smear",
                               "peripheral smear", "blood film", "bone marrow aspirate", "cytology",
                               "cytological", "Pap smear", "smear", "bright-field microscopy",
                               "brightfield microscopy")),
    # plots and charts
    "Bar chart": (PLOT, ("bar chart", "bar graph", "bar plot", "histogram", "column chart")),
    "Scatter plot": (PLOT, ("scatter plot", "scatterplot", "scatter diagram", "correlation plot",
                            "regression plot", "Bland-Altman plot", "PCA plot",
                            "volcano plot", "dot plot")),
    "Survival curve": (PLOT, ("survival curve", "Kaplan-Meier", "Kaplan-Meier curve",
                              "Kaplan-Meier plot", "cumulative incidence curve", "survival plot")),
    "Flow chart": (PLOT, ("flow chart", "flowchart", "flow diagram", "CONSORT diagram",
                          "study flow", "PRISMA diagram", "participant flow")),
    "Line graph": (PLOT, ("line graph", "line chart", "line plot", "time course", "growth curve",
                          "dose-response curve", "ROC curve", "receiver operating characteristic")),
    "Box plot": (PLOT, ("box plot", "boxplot", "box-and-whisker plot", "violin plot")),
    "Forest plot": (PLOT, ("forest plot", "meta-analysis plot")),
    "Heat map": (PLOT, ("heat map", "heatmap")),
    # diagrams
    "Schematic": (DIAG, ("schematic", "schematic diagram", "schematic representation", "schematic drawing",
                         "diagram", "illustration", "cartoon", "graphical abstract", "drawing",
                         "pathway diagram", "model diagram",
                         "diagrammatic representation", "phylogenetic tree", "dendrogram",
                         "Venn diagram")),
}

#: group words that name a group but no specific modality (used only as a fallback)
GROUP_WORDS: dict[str, tuple[str, ...]] = {
    RAD: ("imaging", "scan", "radiological", "radiologic"),
    MIC: ("micrograph", "microscopy", "microscopic", "magnification", "objective"),
    VLP: (),
    PLOT: ("plot", "graph", "chart", "curve"),
    DIAG: ("scheme",),
}

# --------------------------------------------------------------------------------------------
# anatomy: canonical -> (region, surface forms)
# --------------------------------------------------------------------------------------------

#: canonical structure -> (coarse region, surface forms). Regions: head, neck, thorax, abdomen,
#: pelvis, spine, limb, skin, eye, blood, systemic.
ANATOMY: dict[str, tuple[str, tuple[str, ...]]] = {
    "Brain": ("head", ("brain", "cerebral", "cerebrum", "cerebellum", "cerebellar", "brainstem",
                       "brain stem", "cerebral cortex", "intracranial", "white matter", "gray matter",
                       "grey matter", "basal ganglia", "thalamus", "hippocampus")),
    "Skull": ("head", ("skull", "cranium", "cranial", "calvarium")),
    "Paranasal sinuses": ("head", ("paranasal sinus", "maxillary sinus", "frontal sinus", "sinonasal")),
    "Eye": ("eye", ("eye", "retina", "retinal", "macula", "macular", "optic disc", "optic nerve head",
                    "cornea", "corneal", "iris", "lens", "orbit", "orbital", "ocular", "choroid")),
    "Oral cavity": ("head", ("oral cavity", "gingiva", "mandible", "maxilla", "tooth", "teeth",
                             "dental", "jaw")),
    "Thyroid": ("neck", ("thyroid", "thyroid gland", "parathyroid")),
    "Neck": ("neck", ("neck", "cervical lymph node", "larynx", "laryngeal", "pharynx", "pharyngeal")),
    "Lung": ("thorax", ("lung", "pulmonary", "lobe of the lung", "upper lobe", "lower lobe", "middle lobe",
                        "lingula", "lung field", "lung fields", "bronchus", "bronchi", "bronchial",
                        "bronchiole", "alveolar", "alveoli", "pleura", "pleural", "airway")),
    "Heart": ("thorax", ("heart", "cardiac", "myocardium", "myocardial", "ventricle", "atrium",
                         "atrial", "pericardium", "pericardial", "coronary artery", "coronary",
                         "aortic valve", "mitral valve")),
    "Chest": ("thorax", ("chest", "thorax", "thoracic", "mediastinum", "mediastinal")),
    "Aorta": ("thorax", ("aorta", "aortic")),
    "Breast": ("thorax", ("breast", "mammary")),
    "Esophagus": ("thorax", ("esophagus", "oesophagus", "esophageal", "oesophageal")),
    "Liver": ("abdomen", ("liver", "hepatic", "hepatocyte", "hepatocytes")),
    "Gallbladder": ("abdomen", ("gallbladder", "biliary", "bile duct", "common bile duct")),
    "Pancreas": ("abdomen", ("pancreas", "pancreatic")),
    "Spleen": ("abdomen", ("spleen", "splenic")),
    "Kidney": ("abdomen", ("kidney", "renal", "glomerulus", "glomeruli", "glomerular", "nephron")),
    "Adrenal gland": ("abdomen", ("adrenal", "adrenal gland")),
    "Stomach": ("abdomen", ("stomach", "gastric")),
    "Small intestine": ("abdomen", ("small intestine", "small bowel", "duodenum", "duodenal",
                                    "jejunum", "ileum", "ileal")),
    "Colon": ("abdomen", ("colon", "colonic", "large bowel", "large intestine", "rectum", "rectal",
                          "colorectal", "cecum", "caecum", "appendix")),
    "Abdomen": ("abdomen", ("abdomen", "abdominal", "peritoneum", "peritoneal", "retroperitoneum")),
    "Bladder": ("pelvis", ("bladder", "urinary bladder", "urothelium", "urothelial")),
    "Prostate": ("pelvis", ("prostate", "prostatic")),
    "Uterus": ("pelvis", ("uterus", "uterine", "endometrium", "endometrial", "cervix", "placenta",
                          "placental")),
    "Ovary": ("pelvis", ("ovary", "ovaries", "ovarian", "adnexa", "adnexal")),
    "Testis": ("pelvis", ("testis", "testes", "testicular", "scrotum", "scrotal")),
    "Pelvis": ("pelvis", ("pelvis", "pelvic", "hip joint", "hip")),
    "Spine": ("spine", ("spine", "spinal", "vertebra", "vertebrae", "vertebral", "spinal cord",
                        "lumbar spine", "cervical spine", "thoracic spine", "intervertebral disc")),
    "Knee": ("limb", ("knee", "patella", "meniscus", "menisci")),
    "Shoulder": ("limb", ("shoulder", "humeral head", "rotator cuff")),
    "Hand": ("limb", ("hand", "wrist", "finger", "fingers", "carpal", "metacarpal")),
    "Foot": ("limb", ("foot", "ankle", "toe", "calcaneus", "metatarsal")),
    "Bone": ("limb", ("bone", "femur", "femoral", "tibia", "tibial", "fibula", "humerus", "radius",
                      "ulna", "osseous", "cortical bone", "bone marrow")),
    "Skeletal muscle": ("limb", ("skeletal muscle", "muscle", "muscular", "myofiber", "myofibers")),
    "Skin": ("skin", ("skin", "cutaneous", "epidermis", "epidermal", "dermis", "dermal", "scalp")),
    "Lymph node": ("systemic", ("lymph node", "nodal", "lymphoid tissue")),
    "Blood vessel": ("systemic", ("artery", "arterial", "vein", "venous", "vessel", "vascular",
                                  "capillary", "capillaries", "endothelium", "endothelial")),
    "Blood": ("blood", ("blood", "peripheral blood", "red blood cell", "red cells", "erythrocyte",
                        "erythrocytes", "neutrophil", "lymphocyte", "platelet", "leukocyte",
                        "white blood cell")),
}

# --------------------------------------------------------------------------------------------
# planes and projections: canonical -> (kind, surface forms)
# --------------------------------------------------------------------------------------------

PLANES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Axial": ("section", ("axial", "transaxial", "transverse section", "transverse plane",
                          "transverse image", "transverse view", "transverse slice", "cross-sectional image")),
    "Coronal": ("section", ("coronal", "coronal plane", "coronal section", "coronal reformat")),
    "Sagittal": ("section", ("sagittal", "sagittal plane", "sagittal section", "midsagittal",
                             "parasagittal", "sagittal reformat")),
    "Posteroanterior (PA)": ("projection", ("PA", "posteroanterior", "postero-anterior", "PA view",
                                            "PA projection", "posterior-anterior")),
    "Anteroposterior (AP)": ("projection", ("AP", "anteroposterior", "antero-posterior", "AP view",
                                            "AP projection", "anterior-posterior", "AP supine")),
    "Lateral": ("projection", ("lateral view", "lateral projection", "lateral radiograph",
                               "lateral film", "lateral chest radiograph", "lateral decubitus")),
    "Oblique": ("projection", ("oblique view", "oblique projection", "oblique radiograph")),
}

# --------------------------------------------------------------------------------------------
# stains
# --------------------------------------------------------------------------------------------

STAINS: dict[str, tuple[str, ...]] = {
    "H&E": ("H&E", "HE", "H and E", "hematoxylin and eosin", "haematoxylin and eosin",
            "hematoxylin-eosin", "haematoxylin-eosin", "hematoxylin & eosin", "HE stain", "HE staining"),
    "PAS": ("PAS", "periodic acid-Schiff", "periodic acid Schiff", "PAS stain", "PAS-D"),
    "Giemsa": ("Giemsa", "May-Grünwald-Giemsa", "May-Grunwald-Giemsa", "MGG"),
    "Wright stain": ("Wright stain", "Wright-Giemsa", "Wright's stain", "Wright’s stain", "Wright-stained"),
    "Masson trichrome": ("trichrome", "Masson trichrome", "Masson's trichrome", "Masson’s trichrome"),
    "Silver stain": ("silver stain", "Grocott", "GMS", "methenamine silver", "Gomori", "reticulin",
                     "Jones silver", "Warthin-Starry"),
    "Gram stain": ("Gram stain", "Gram-stained", "Gram staining"),
    "Ziehl-Neelsen": ("Ziehl-Neelsen", "ZN", "acid-fast stain", "AFB stain"),
    "Congo red": ("Congo red",),
    "Prussian blue": ("Prussian blue", "Perls", "Perls' stain", "Perl's stain", "iron stain"),
    "Alcian blue": ("Alcian blue",),
    "Oil Red O": ("Oil Red O", "oil red"),
    "Toluidine blue": ("toluidine blue",),
    "Elastic stain": ("Verhoeff", "elastic van Gieson", "EVG", "Verhoeff-Van Gieson", "elastica"),
    "Mucicarmine": ("mucicarmine",),
    "Papanicolaou": ("Papanicolaou", "Pap stain"),
    "Immunohistochemistry": ("IHC", "immunohistochemistry", "immunohistochemical", "immunostaining",
                             "immunostain", "immunoperoxidase", "DAB"),
    "Immunofluorescence": ("immunofluorescence", "immunofluorescent", "DAPI", "FITC"),
}

# --------------------------------------------------------------------------------------------
# normal / abnormal cues
# --------------------------------------------------------------------------------------------

NORMAL_CUES: dict[str, tuple[str, ...]] = {
    "normal": ("normal", "unremarkable", "healthy", "within normal limits", "no abnormality",
               "no abnormalities", "no abnormal findings", "no significant abnormality",
               "no pathological findings", "no acute findings", "no evidence of disease",
               "normal appearance", "normal-appearing", "normal appearing", "physiological",
               "healthy control", "healthy volunteer"),
}

ABNORMAL_CUES: dict[str, tuple[str, ...]] = {
    "lesion": ("lesion",), "mass": ("mass",), "tumour": ("tumour", "tumor", "neoplasm", "neoplastic"),
    "cancer": ("cancer", "carcinoma", "adenocarcinoma", "malignancy", "malignant", "metastasis",
               "metastases", "metastatic", "sarcoma", "lymphoma", "leukemia", "leukaemia", "melanoma"),
    "opacity": ("opacity", "opacities", "ground-glass", "ground glass", "consolidation", "infiltrate",
                "infiltrates", "infiltration"),
    "effusion": ("effusion",), "fracture": ("fracture",), "nodule": ("nodule", "nodular"),
    "embolism": ("embolus", "emboli", "embolism", "thrombus", "thrombi", "thrombosis"),
    "haemorrhage": ("hemorrhage", "haemorrhage", "bleeding", "hematoma", "haematoma"),
    "infarction": ("infarct", "infarction", "ischemia", "ischaemia", "ischemic", "ischaemic"),
    "oedema": ("edema", "oedema"), "stenosis": ("stenosis", "occlusion", "obstruction"),
    "aneurysm": ("aneurysm", "microaneurysm", "microaneurysms", "dissection"),
    "fibrosis": ("fibrosis", "fibrotic", "honeycomb", "honeycombing", "scarring", "cirrhosis"),
    "necrosis": ("necrosis", "necrotic", "gangrene"),
    "inflammation": ("inflammation", "inflammatory", "pneumonia", "abscess", "infection", "infected",
                     "ulcer", "ulceration", "erosion", "granuloma", "vasculitis"),
    "cyst": ("cyst", "cystic"), "calcification": ("calcification", "calcified"),
    "enlargement": ("dilation", "dilatation", "dilated", "enlarged", "enlargement", "hypertrophy",
                    "hyperplasia", "hyperinflation", "cardiomegaly", "hepatomegaly", "splenomegaly"),
    "atrophy": ("atrophy", "atrophic", "degeneration", "degenerative"),
    "disease": ("disease", "disorder", "syndrome", "pathology", "pathological", "abnormal",
                "abnormality", "abnormalities", "worsening", "retinopathy", "ARDS", "COPD",
                "exacerbation", "COVID-19", "pneumothorax", "atelectasis", "emphysema",
                "schistocytes", "schistocyte", "smudge cells", "smudge cell", "hypersegmented",
                "Reed-Sternberg", "dysplasia", "atypia", "atypical", "anomaly", "malformation",
                "deformity", "rupture", "perforation", "herniation", "hernia", "bronchiolitis"),
}

# --------------------------------------------------------------------------------------------
# finding descriptors (used by the B2 finding-leakage check)
# --------------------------------------------------------------------------------------------

LATERALITY: dict[str, tuple[str, ...]] = {
    "left": ("left", "left-sided"), "right": ("right", "right-sided"),
    "bilateral": ("bilateral", "bilaterally", "both sides", "both lungs"),
    "unilateral": ("unilateral", "unilaterally"), "ipsilateral": ("ipsilateral",),
    "contralateral": ("contralateral",),
}
LOCATION: dict[str, tuple[str, ...]] = {
    "upper": ("upper",), "lower": ("lower",), "middle": ("middle", "mid"),
    "anterior": ("anterior", "ventral"), "posterior": ("posterior", "dorsal"),
    "medial": ("medial",), "lateral": ("lateral",), "superior": ("superior", "cranial"),
    "inferior": ("inferior", "caudal"), "proximal": ("proximal",), "distal": ("distal",),
    "apical": ("apical", "apex"), "basal": ("basal", "base"), "peripheral": ("peripheral", "periphery"),
    "central": ("central", "centrally"), "subpleural": ("subpleural",), "perihilar": ("perihilar", "hilar"),
    "periventricular": ("periventricular",), "subcapsular": ("subcapsular",),
    "intraluminal": ("intraluminal",), "submucosal": ("submucosal",), "head": ("head of the",),
    "tail": ("tail of the",), "body": ("body of the",), "quadrant": ("quadrant",),
    "lobe": ("lobe", "lobar"),
}
SIZE: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "minute"), "large": ("large", "big", "huge", "giant", "massive",
                                                    "bulky"),
    "enlarged": ("enlarged",), "diffuse": ("diffuse", "widespread", "extensive"),
    "focal": ("focal", "localized", "localised"),
}
COLOUR: dict[str, tuple[str, ...]] = {
    "red": ("red", "reddish"), "blue": ("blue", "bluish"), "green": ("green", "greenish"),
    "yellow": ("yellow", "yellowish"), "brown": ("brown", "brownish"), "purple": ("purple", "violet"),
    "pink": ("pink", "pinkish"), "black": ("black",), "white": ("white", "whitish"), "grey": ("grey", "gray"),
    "dark": ("dark", "darker"), "bright": ("bright", "brighter"),
    "hyperintense": ("hyperintense", "hyperintensity"), "hypointense": ("hypointense", "hypointensity"),
    "hyperdense": ("hyperdense", "hyperattenuating"), "hypodense": ("hypodense", "hypoattenuating"),
    "hyperechoic": ("hyperechoic", "echogenic"), "hypoechoic": ("hypoechoic", "anechoic"),
    "radiopaque": ("radiopaque", "radiodense"), "radiolucent": ("radiolucent", "lucent", "lucency"),
    "eosinophilic": ("eosinophilic",), "basophilic": ("basophilic",),
}
COUNT: dict[str, tuple[str, ...]] = {
    "single": ("single", "solitary", "isolated"), "two": ("two", "pair of", "double"),
    "three": ("three",), "four": ("four",), "five": ("five",), "multiple": ("multiple", "numerous",
                                                                             "several", "many",
                                                                             "multifocal"),
}
MORPHOLOGY: dict[str, tuple[str, ...]] = {
    "round": ("round", "rounded", "spherical", "circular"), "oval": ("oval", "ovoid", "elliptical"),
    "irregular": ("irregular",), "spiculated": ("spiculated",), "lobulated": ("lobulated",),
    "well-defined": ("well-defined", "well defined", "well-circumscribed", "circumscribed"),
    "ill-defined": ("ill-defined", "ill defined", "poorly defined"),
    "ring-enhancing": ("ring-enhancing", "rim-enhancing"), "linear": ("linear",),
    "patchy": ("patchy",), "reticular": ("reticular", "reticulonodular"),
    "ground-glass": ("ground-glass", "ground glass"), "solid": ("solid",), "cystic": ("cystic",),
    "heterogeneous": ("heterogeneous",), "homogeneous": ("homogeneous",),
    "fragmented": ("fragmented",), "segmented": ("segmented", "hypersegmented"),
}

# --------------------------------------------------------------------------------------------
# the lexicon as data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One canonical term of a vocabulary class with its surface forms and attribute
    (``group`` of a modality, ``region`` of an anatomy term, ``kind`` of a plane)."""

    vocab_class: str
    canonical: str
    forms: tuple[str, ...]
    attr: str | None = None


@dataclass(frozen=True)
class Match:
    vocab_class: str
    canonical: str
    surface: str
    start: int
    end: int


def _with_self(canonical: str, forms: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((canonical, *forms)))


#: classes whose canonical name is itself a surface form (plane labels such as "Lateral" and
#: descriptor keys are not: "lateral" alone is a location word, not a projection)
_SELF_FORM_CLASSES = ("modality", "anatomy", "stain", "abnormal")


def _build() -> dict[str, dict[str, Term]]:
    vocab: dict[str, dict[str, Term]] = {}

    def add(cls: str, entries: dict, with_attr: bool) -> None:
        table = vocab.setdefault(cls, {})
        for canonical, value in entries.items():
            attr, forms = value if with_attr else (None, value)
            self_form = cls in _SELF_FORM_CLASSES
            table[canonical] = Term(cls, canonical, _with_self(canonical, forms) if self_form else tuple(forms), attr)

    add("modality", MODALITIES, True)
    add("anatomy", ANATOMY, True)
    add("plane", PLANES, True)
    add("stain", STAINS, False)
    add("normal", NORMAL_CUES, False)
    add("abnormal", ABNORMAL_CUES, False)
    add("laterality", LATERALITY, False)
    add("location", LOCATION, False)
    add("size", SIZE, False)
    add("colour", COLOUR, False)
    add("count", COUNT, False)
    add("morphology", MORPHOLOGY, False)
    vocab["group_word"] = {g: Term("group_word", g, forms, g) for g, forms in GROUP_WORDS.items() if forms}
    return vocab


VOCAB: dict[str, dict[str, Term]] = _build()
#: the vocabulary classes :func:`find_terms` accepts
VOCAB_CLASSES: tuple[str, ...] = tuple(c for c in VOCAB if c != "group_word")
#: finding-descriptor classes (what a perception stem must not reveal about the answer)
DESCRIPTOR_CLASSES: tuple[str, ...] = ("laterality", "location", "size", "colour", "count", "morphology")


def _case_sensitive(form: str) -> bool:
    letters = [c for c in form if c.isalpha()]
    return bool(letters) and len(form) <= 5 and all(c.isupper() for c in letters)


def _form_regex(form: str) -> str:
    # a space or hyphen in a form matches any run of spaces/hyphens/dashes; either apostrophe
    body = re.sub(r"\\ |\\-|['’]", lambda m: "['’]" if m.group(0) in "'’" else r"[\s\-‐–]+", re.escape(form))
    if form[-1].isalpha():
        body += "(?:e?s)?"
    return body if _case_sensitive(form) else f"(?i:{body})"


@lru_cache(maxsize=None)
def _pattern(classes: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, tuple[str, str]]]:
    """One alternation over every surface form of ``classes``, longest form first; named groups
    cannot be used (thousands of them), so the form is looked up from the matched text."""
    forms: dict[str, tuple[str, str]] = {}
    for cls in classes:
        for term in VOCAB[cls].values():
            for f in term.forms:
                forms.setdefault(f, (cls, term.canonical))
    ordered = sorted(forms, key=lambda f: (-len(f), f))
    alternation = "|".join(f"({_form_regex(f)})" for f in ordered)
    pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternation})(?![A-Za-z0-9])")
    index = {str(i + 1): forms[f] for i, f in enumerate(ordered)}
    return pattern, index


def scan(text: str | None, classes: str | tuple[str, ...] | list[str]) -> list[Match]:
    """Every non-overlapping match of the given vocabulary class(es) in ``text``, in order;
    longest surface form first at each position (across all the classes given together)."""
    if not text:
        return []
    classes = (classes,) if isinstance(classes, str) else tuple(classes)
    for c in classes:
        if c not in VOCAB:
            raise KeyError(f"unknown vocabulary class {c!r}; known: {', '.join(VOCAB)}")
    pattern, index = _pattern(classes)
    out: list[Match] = []
    for m in pattern.finditer(text):
        cls, canonical = index[str(m.lastindex)]
        out.append(Match(cls, canonical, m.group(0), m.start(), m.end()))
    return out


def find_terms(text: str | None, vocab_class: str) -> list[str]:
    """Canonical terms of ``vocab_class`` named in ``text`` (whole words, case-insensitive except
    short capital abbreviations, longest match first, synonyms mapped to the canonical term),
    de-duplicated in order of first appearance."""
    return list(dict.fromkeys(m.canonical for m in scan(text, vocab_class)))


def terms(vocab_class: str) -> list[Term]:
    """Every canonical :class:`Term` of a vocabulary class, in lexicon order."""
    return list(VOCAB[vocab_class].values())


def term(vocab_class: str, canonical: str) -> Term:
    return VOCAB[vocab_class][canonical]


def modality_group(modality: str | None) -> str | None:
    """The MODALITY_GROUPS group of a canonical modality, or of the first modality a free-text
    label names ("CT (CT pulmonary angiography, 2 panels)" → Radiology)."""
    if not modality:
        return None
    if modality in MODALITIES:
        return MODALITIES[modality][0]
    found = find_terms(modality, "modality")
    return MODALITIES[found[0]][0] if found else None


def detect_modality(text: str | None) -> tuple[str | None, str | None]:
    """``(group, modality)`` for a caption/context: the canonical modality named most often
    (ties: earliest mention) and its group; when no specific modality is named but a group word
    is ("micrograph", "plot"), ``(group, None)``; ``(None, None)`` when nothing matches."""
    matches = scan(text, "modality")
    if matches:
        counts = Counter(m.canonical for m in matches)
        first = {}
        for m in matches:
            first.setdefault(m.canonical, m.start)
        best = max(counts, key=lambda c: (counts[c], -first[c]))
        return MODALITIES[best][0], best
    groups = scan(text, "group_word")
    if groups:
        counts = Counter(m.canonical for m in groups)
        return max(counts, key=lambda g: (counts[g], -min(m.start for m in groups if m.canonical == g))), None
    return None, None


def normal_abnormal(text: str | None) -> str | None:
    """``"normal"`` or ``"abnormal"`` when the text's cues agree, else None (no cue, or both).

    Normal and abnormal cues are scanned together so that the longest phrase wins ("no
    abnormality" is a normal cue). Article text describing a disease almost always contains an
    abnormal cue; a single normal cue next to abnormal ones (e.g. "normal lung and a mass") is
    treated as a conflict, not as normal."""
    found = {m.vocab_class for m in scan(text, ("normal", "abnormal"))}
    if found == {"normal"}:
        return "normal"
    if found == {"abnormal"}:
        return "abnormal"
    return None


__all__ = [
    "ABNORMAL_CUES", "ANATOMY", "DESCRIPTOR_CLASSES", "MODALITIES", "Match", "NORMAL_CUES", "PLANES",
    "STAINS", "Term", "VOCAB", "VOCAB_CLASSES", "detect_modality", "find_terms", "modality_group",
    "normal_abnormal", "scan", "term", "terms",
]
